"""What ``kdistill eval`` leaves for people: ``summary.md`` (markdown tables of the flat metrics)
and PNG plots (ROC curve per finding, reliability diagram), drawn with matplotlib's Agg backend."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from kdistill.io import atomic_path, write_text_atomic
from kdistill.labels import FINDINGS

Metrics = Mapping[str, "float | str"]

_HEADLINE = (
    ("auc_micro_14", "micro-AUC, 14 findings"),
    ("baseline/constant_prevalence/auc_micro_14", "micro-AUC of a constant-prevalence predictor (baseline)"),
    ("auc_macro_14", "macro-AUC, 14 findings"),
    ("auc_micro_5", "micro-AUC, 5 competition findings"),
    ("auc_macro_5", "macro-AUC, 5 competition findings"),
    ("f1_micro_14", "micro-F1 at the operating points, 14"),
    ("f1_macro_14", "macro-F1 at the operating points, 14"),
    ("ece", "expected calibration error (10 bins)"),
)
_LABEL_F1 = ("micro_14", "macro_14", "micro_5", "macro_5")
_NLG = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d")


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def summary_markdown(metrics: Metrics, split: str, notes: Sequence[str] = ()) -> str:
    """A readable page of the flat metrics of ``split`` (keys "<split>/...")."""
    m = {k[len(split) + 1 :]: v for k, v in metrics.items() if k.startswith(split + "/")}
    lines = [f"# kdistill evaluation — split `{split}`", ""]
    lines += [f"Studies: {int(m.get('n_studies', 0))}; counted labels: {int(m.get('n_counted_labels', 0))}.", ""]
    lines += ["## Classification", "", "| metric | value | 95% CI (bootstrap) |", "| --- | --- | --- |"]
    for key, text in _HEADLINE:
        if key in m:
            ci = (f"{m[key + '_ci_low']:.4f} – {m[key + '_ci_high']:.4f}" if f"{key}_ci_low" in m else "")
            lines.append(f"| {text} | {_fmt(m[key])} | {ci} |")
        elif f"skipped/{key}" in m:
            lines.append(f"| {text} | skipped: {m[f'skipped/{key}']} | |")
    lines += ["", "| finding | AUC | F1 | threshold |", "| --- | --- | --- | --- |"]
    for finding in FINDINGS:
        auc = m.get(f"auc/{finding}", f"skipped ({m.get(f'skipped/auc/{finding}', '?')})")
        f1 = m.get(f"f1/{finding}", f"skipped ({m.get(f'skipped/f1/{finding}', '?')})")
        lines.append(f"| {finding} | {_fmt(auc)} | {_fmt(f1)} | {_fmt(m.get(f'thresholds/{finding}', ''))} |")
    noise = sorted({k.split("/")[0] for k in m if k.startswith("noise_")}, key=lambda s: float(s[6:]))
    if noise:
        lines += ["", "## Gaussian-noise robustness", "", "| sigma | micro-AUC 14 | macro-AUC 14 | micro-F1 14 |",
                  "| --- | --- | --- | --- |", f"| 0 | {_fmt(m.get('auc_micro_14', '-'))} | {_fmt(m.get('auc_macro_14', '-'))} "
                  f"| {_fmt(m.get('f1_micro_14', '-'))} |"]
        for n in noise:
            lines.append(f"| {n[6:]} | {_fmt(m.get(f'{n}/auc_micro_14', '-'))} | {_fmt(m.get(f'{n}/auc_macro_14', '-'))} "
                         f"| {_fmt(m.get(f'{n}/f1_micro_14', '-'))} |")
    labelers = [name for name in ("chexbert_f1", "chexpert_rules_f1") if f"{name}/micro_14" in m]
    for name in labelers:
        lines += ["", f"## Report label F1 (`{name}`)", "", "| mapping | " + " | ".join(_LABEL_F1) + " |",
                  "| --- " * (len(_LABEL_F1) + 1) + "|"]
        for variant, text in (("", "positive only (-1 -> negative)"), ("uncertain_positive/", "uncertain as positive")):
            lines.append(f"| {text} | " + " | ".join(_fmt(m.get(f"{name}/{variant}{k}", "-")) for k in _LABEL_F1) + " |")
    if any(k in m for k in _NLG):
        lines += ["", "## Report NLG", "", "| " + " | ".join(_NLG) + " |", "| --- " * len(_NLG) + "|",
                  "| " + " | ".join(_fmt(m.get(k, "-")) for k in _NLG) + " |", "",
                  "Definitions as pycocoevalcap (corpus BLEU with closest reference length, ROUGE-L beta 1.2, "
                  "CIDEr-D sigma 6 with document frequency from this split's references). METEOR is not computed: "
                  "its reference implementation needs Java and WordNet."]
    if "rationale_consistency/f1" in m:
        lines += ["", "## Rationale consistency (labeler on rationale vs study labels)", "",
                  "| precision | recall | F1 |", "| --- | --- | --- |",
                  "| " + " | ".join(_fmt(m[f"rationale_consistency/{k}"]) for k in ("precision", "recall", "f1")) + " |"]
    lines += _saliency_table(m)
    skipped = sorted(k for k in m if "skipped/" in k and not k.startswith(("skipped/auc/", "skipped/f1/")))
    if skipped or notes:
        lines += ["", "## Skipped and notes", ""]
        lines += [f"- `{k}`: {m[k]}" for k in skipped]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


_SALIENCY = (("pointing_game", "chance_pointing", "pointing game (chance)"),
             ("energy_pointing_game", "chance_energy", "energy in region (chance)"),
             ("dice", None, "Dice"), ("iou", None, "IoU"), ("leakage_outside", None, "mass outside region"),
             ("leakage_other", None, "mass on other findings' regions"),
             ("deletion_auc", "deletion_auc_random", "deletion AUC (random order), lower is better"),
             ("insertion_auc", "insertion_auc_random", "insertion AUC (random order), higher is better"),
             ("noise_spearman", None, "noise robustness (Spearman)"), ("shift_spearman", None, "shift robustness (Spearman)"),
             ("randomisation_spearman", None, "randomised-model Spearman (low is good)"),
             ("n_pairs", "n_pairs_costly", "pairs (for the costly rows)"))


def _saliency_table(m: Metrics) -> list[str]:
    """The saliency section: one column per method (``saliency/<method>/<metric>``)."""
    methods = sorted({k.split("/")[1] for k in m if k.startswith("saliency/") and k.count("/") >= 2
                      and not k.split("/")[1].startswith("n_")}, key=lambda s: ("attention", "gradcam", "fused").index(s)
                     if s in ("attention", "gradcam", "fused") else 9)
    if not methods:
        return []
    lines = ["", "## Saliency against expert regions", "",
             f"Pairs available: {int(m.get('saliency/n_pairs_available', 0))} (studies with regions: "
             f"{int(m.get('saliency/n_studies_with_regions', 0))}).", "",
             "| metric | " + " | ".join(methods) + " |", "| --- " * (len(methods) + 1) + "|"]
    for key, ref, text in _SALIENCY:
        cells = []
        for method in methods:
            value = m.get(f"saliency/{method}/{key}")
            fmt = (lambda v: str(int(v))) if key.startswith("n_") else _fmt
            cell = "-" if value is None else fmt(value)
            if ref is not None and f"saliency/{method}/{ref}" in m:
                cell += f" ({fmt(m[f'saliency/{method}/{ref}'])})"
            cells.append(cell)
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    return lines


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)


def plot_roc(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """One ROC panel per finding (with its AUC); a single-class finding's panel says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = plt.subplots(4, 4, figsize=(13, 13))
    for j, ax in enumerate(axes.ravel()):
        if j >= len(FINDINGS):
            ax.axis("off")
            continue
        m = mask[:, j].astype(bool)
        t, p = y[m, j].astype(int), probs[m, j]
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        if t.min(initial=0) == t.max(initial=0):
            ax.text(0.5, 0.5, "single class:\nskipped", ha="center", va="center")
        else:
            fpr, tpr, _ = roc_curve(t, p)
            ax.plot(fpr, tpr, lw=1.5)
            ax.text(0.55, 0.08, f"AUC {roc_auc_score(t, p):.3f}")
        ax.set_title(FINDINGS[j], fontsize=9)
        if j % 4 == 0:
            ax.set_ylabel("true positive rate")
        if j >= len(FINDINGS) - 4:
            ax.set_xlabel("false positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_reliability(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Reliability diagram over every counted entry: observed positive rate against mean
    predicted probability per equal-width bin, with bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = mask.astype(bool)
    p, t = probs[m], y[m].astype(float)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    conf, acc, count = [], [], []
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf.append(p[sel].mean())
            acc.append(t[sel].mean())
            count.append(int(sel.sum()))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 7), gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, label="perfect calibration")
    ax.plot(conf, acc, marker="o", label="model")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax2.bar(conf, count, width=0.8 / bins)
    ax2.set_xlim(0, 1)
    ax2.set_ylabel("entries")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def write_summary(metrics: Metrics, split: str, out_dir: Path, notes: Sequence[str] = ()) -> str:
    text = summary_markdown(metrics, split, notes)
    write_text_atomic(Path(out_dir) / "summary.md", text)
    return text
