"""``kdistill eval``: score a predictions file or a student checkpoint on one split.

Inputs: a predictions file (CSV or JSONL; one row per study: ``study_id``, the 14 probabilities
named by ``kdistill.labels.FINDINGS``, the generated ``report``, optionally a ``rationale``) or a
student checkpoint (``student.load``), plus the dataset root (``kdistill.data.mimic``) or a
prepared cache whose split holds the reference labels and reports.

Outputs in ``--out``: ``metrics.json`` (flat: every number named with split and variant, e.g.
``test/auc_micro_14``, ``test/auc/Edema``, ``test/noise_0.05/auc_micro_14``,
``test/chexpert_rules_f1/micro_14``, ``test/bleu_4``; skips as ``test/skipped/...`` with the
reason), ``summary.md`` (printed too), ``roc.png`` and ``reliability.png``. metrics.json holds
only figures that one config on one machine reproduces exactly; wall times (the saliency methods'
seconds per map) go to ``timing.json``.

Saliency (``saliency`` section, ``eval.student_saliency``): from a checkpoint and a prepared
cache whose split has expert regions, the student's maps (``attention``, ``gradcam``, ``fused``)
scored against the regions, as ``<split>/saliency/<method>/<metric>``, a table in ``summary.md``
and ``saliency_gallery.png``.

Operating points: per-finding thresholds maximising F1 on validation predictions when given
(``--validate-predictions``, or the checkpoint's ``thresholds.json`` / its validation split);
otherwise 0.5, and the outputs say so. Noise robustness (Gaussian noise on the images, sigma in
``--noise``) needs a model, so it runs only from a checkpoint; from a predictions file it is
skipped by name.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np

from eval import classification, label_f1, nlg
from eval.predictions import Predictions, align, predictions_from_checkpoint, read_predictions
from eval.references import ReferenceSet, load_references
from eval.student_saliency import SaliencyEvalConfig, score_student_saliency
from kdistill import scoring
from kdistill.data.sections import strip_headers
from kdistill.errors import DataError
from kdistill.io import nonfinite_to_none, write_json
from kdistill.outputs import own_output, pop_overwrite
from kdistill.labeler.consistency import consistency_scores
from kdistill.labels import FINDINGS, NUM_FINDINGS

log = logging.getLogger(__name__)

DEFAULT_SIGMAS = (0.01, 0.05, 0.1)
# What marks a folder as this command's output (kdistill.outputs.claim_folder); a student
# checkpoint has a metrics.json too, but no summary.md.
MARKERS = (("metrics.json", "summary.md"),)
KIND = "evaluation folder"
METEOR_NOTE = "not computed: its reference implementation needs Java and WordNet, which kdistill does not ship"


# --------------------------------------------------------------------------- evaluation


def noise_robustness(
    predict_probs: Callable[[np.ndarray], np.ndarray],
    image_batches: Callable[[], Iterator[np.ndarray]],
    labels: np.ndarray,
    sigmas: Sequence[float],
    thresholds: np.ndarray | None,
    n_bootstrap: int = 0,
    seed: int = 0,
    uncertain: str = "ignore",
) -> dict[str, float | str]:
    """Every classification metric with N(0, sigma^2) pixel noise added to the images (clipped to
    [0, 1]), keyed ``noise_<sigma>/<metric>``. ``image_batches()`` yields the images in row order."""
    from kdistill.data.images import to_unit_float

    out: dict[str, float | str] = {}
    for k, sigma in enumerate(sigmas):
        rng = np.random.default_rng([seed, k])
        probs = []
        for images in image_batches():
            images = to_unit_float(images)
            noisy = np.clip(images + rng.normal(0.0, sigma, images.shape).astype(np.float32), 0.0, 1.0)
            probs.append(np.asarray(predict_probs(noisy), dtype=np.float64))
        metrics = classification.classification_metrics(
            np.concatenate(probs), labels, thresholds=thresholds, uncertain=uncertain, n_bootstrap=n_bootstrap, seed=seed)
        out.update({f"noise_{sigma:g}/{key}": value for key, value in metrics.items()})
    return out


def evaluate(
    preds: Predictions,
    ref: ReferenceSet,
    *,
    thresholds: np.ndarray | None = None,
    thresholds_source: str = "fixed 0.5 (no validation predictions given)",
    n_bootstrap: int = 1000,
    seed: int = 0,
    uncertain: str = "ignore",
    labeler: tuple[Callable[[Sequence[str]], np.ndarray], str] | None = None,
    noise: tuple[Callable[[np.ndarray], np.ndarray], Callable[[], Iterator[np.ndarray]], Sequence[float]] | None = None,
    noise_skip_reason: str = "needs a checkpoint (a model to run on noisy images); only a predictions file was given",
    train_labels: np.ndarray | None = None,
) -> tuple[dict[str, float | str], list[str]]:
    """Every metric of one split, flat and prefixed ``<split>/``, and notes for the summary.
    ``preds`` and ``ref`` must be aligned (see :func:`align`). ``noise``: (images -> probs, a
    function yielding the split's images in row order, sigmas) for the robustness study.
    ``train_labels``: the training split's raw labels, for the constant-prevalence baseline."""
    if preds.study_ids != ref.study_ids:
        raise ValueError("predictions and references are not aligned; call align() first")
    split = ref.split
    notes: list[str] = []
    m: dict[str, float | str] = {}
    t = np.full(NUM_FINDINGS, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    m.update(classification.classification_metrics(preds.probs, ref.labels, thresholds=t, uncertain=uncertain,
                                                   n_bootstrap=n_bootstrap, seed=seed))
    m.update({f"thresholds/{f}": float(v) for f, v in zip(FINDINGS, t)})
    m["thresholds_source"] = thresholds_source
    m["label_policy"] = f"uncertain={uncertain}, blank=negative"
    notes.append(f"Operating points: {thresholds_source}.")
    if train_labels is None:
        m["skipped/baseline_constant_prevalence"] = "no training split to take each finding's prevalence from"
    else:
        y, mask = classification.targets(ref.labels, uncertain=uncertain)
        y_tr, m_tr = classification.targets(train_labels, uncertain=uncertain)
        base = scoring.prevalence_baseline_auc(y_tr, m_tr, y, mask)
        m["baseline/constant_prevalence/auc_micro_14"] = base
        notes.append(f"Constant-prevalence baseline: every study scored with each finding's training prevalence "
                     f"reaches micro-AUC {base:.4f} on this split (what knowing prevalence alone gives); "
                     f"the model's is {m.get('auc_micro_14', float('nan')):.4f}.")

    if noise is not None:
        predict_probs, image_batches, sigmas = noise
        m.update(noise_robustness(predict_probs, image_batches, ref.labels, sigmas, t,
                                  n_bootstrap=n_bootstrap, seed=seed, uncertain=uncertain))
    else:
        m["skipped/noise_robustness"] = noise_skip_reason

    if preds.reports is None:
        m["skipped/report_metrics"] = f"{preds.source} has no 'report' column"
    else:
        m.update(_report_metrics(preds, ref, labeler, notes))
    return {f"{split}/{k}": v for k, v in m.items()}, notes


def _report_metrics(preds: Predictions, ref: ReferenceSet, labeler, notes: list[str]) -> dict[str, float | str]:
    m: dict[str, float | str] = {}
    assert preds.reports is not None
    usable = [i for i, text in enumerate(ref.reports) if text.strip()]
    if len(usable) < len(ref.reports):
        m["n_empty_reference_reports"] = float(len(ref.reports) - len(usable))
        notes.append(f"{len(ref.reports) - len(usable)} studies have an empty reference report and are left out of report metrics.")
    if not usable:
        m["skipped/report_metrics"] = "every reference report is empty"
        return m
    generated = [preds.reports[i] for i in usable]
    references = [ref.reports[i] for i in usable]
    m["n_report_pairs"] = float(len(usable))
    m.update(nlg.nlg_metrics([strip_headers(g) for g in generated], [strip_headers(r) for r in references]))
    m["skipped/meteor"] = METEOR_NOTE
    if labeler is None:
        m["skipped/report_label_f1"] = "no report labeler available (kdistill.labeler missing)"
        return m
    label_fn, name = labeler
    m.update(label_f1.report_label_metrics(label_fn(generated), label_fn(references), None, name))
    m["labeler"] = name
    m.update(_rationale_metrics(preds, ref, label_fn))
    return m


def _rationale_metrics(preds: Predictions, ref: ReferenceSet, label_fn) -> dict[str, float | str]:
    """The labeler on each non-empty rationale against the study's own labels."""
    if preds.rationales is None:
        return {"skipped/rationale_consistency": f"{preds.source} has no 'rationale' column"}
    rows = [i for i, text in enumerate(preds.rationales) if text.strip()]
    if not rows:
        return {"skipped/rationale_consistency": "every rationale is empty"}
    said = label_fn([preds.rationales[i] for i in rows])
    out: dict[str, float | str] = {f"rationale_consistency/{k}": v
                                   for k, v in consistency_scores(said, ref.labels[rows]).items()}
    out["rationale_consistency/n_rationales"] = float(len(rows))
    return out


def _labeler(chexbert_checkpoint: str | None, chexbert_tokenizer: str | None):
    try:
        from kdistill.labeler import get_labeler

        return get_labeler(chexbert_checkpoint, chexbert_tokenizer)
    except ImportError as err:
        if chexbert_checkpoint:  # the user asked for CheXbert: not having it is an error, not a skip
            raise
        log.warning("report label F1 skipped: %s", err)
        return None


def write_outputs(metrics: dict[str, float | str], notes: Sequence[str], preds: Predictions, ref: ReferenceSet,
                  out_dir: Path, uncertain: str = "ignore") -> str:
    """metrics.json, summary.md and the plots into ``out_dir``; returns the summary text."""
    from eval import report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", nonfinite_to_none(metrics), sort_keys=True)
    y, mask = classification.targets(ref.labels, uncertain=uncertain)
    report.plot_roc(preds.probs, y, mask, out_dir / "roc.png")
    report.plot_reliability(preds.probs, y, mask, out_dir / "reliability.png")
    notes = [*notes, "Plots: roc.png (ROC per finding), reliability.png (reliability diagram over every counted label)."]
    return report.write_summary(metrics, ref.split, out_dir, notes)


# --------------------------------------------------------------------------- command and stage


@dataclasses.dataclass
class EvalConfig:
    split: str = "test"
    n_bootstrap: int = 1000
    noise_sigmas: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_SIGMAS))
    uncertain: Literal["ignore", "ones", "zeros"] = "ignore"  # how uncertain (-1) study labels count in AUC/F1
    chexbert_checkpoint: str | None = None
    chexbert_tokenizer: str | None = None
    batch_size: int = 8
    # How operating points are chosen on validation when a checkpoint has no thresholds.json, or
    # from --validate-predictions: the same rule as the student's (kdistill.scoring).
    threshold_policy: Literal["prevalence", "f1"] = "prevalence"
    seed: int | None = None  # bootstrap and noise draws; None: the run's seed (0 from the command line)
    # the student's maps against the split's expert regions (eval.student_saliency)
    saliency: SaliencyEvalConfig = dataclasses.field(default_factory=SaliencyEvalConfig)

    def validate(self) -> None:
        if self.n_bootstrap < 0:
            raise ValueError("n_bootstrap must be >= 0")
        if any(s <= 0 for s in self.noise_sigmas):
            raise ValueError("noise_sigmas must be positive")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def evaluate_checkpoint(checkpoint: Path, ref: ReferenceSet, out_dir: Path, cfg: EvalConfig, seed: int = 0,
                        validate_ref: ReferenceSet | None = None,
                        train_labels: np.ndarray | None = None) -> dict[str, float | str]:
    """Score a student checkpoint: predictions, thresholds, noise robustness, outputs."""
    preds, predict_probs, image_batches = predictions_from_checkpoint(checkpoint, ref, cfg.batch_size)
    thresholds, source = _thresholds_for_checkpoint(checkpoint, validate_ref, cfg)
    metrics, notes = evaluate(preds, ref, thresholds=thresholds, thresholds_source=source, n_bootstrap=cfg.n_bootstrap,
                              seed=seed, uncertain=cfg.uncertain,
                              labeler=_labeler(cfg.chexbert_checkpoint, cfg.chexbert_tokenizer),
                              noise=(predict_probs, image_batches, cfg.noise_sigmas) if cfg.noise_sigmas else None,
                              noise_skip_reason="no noise sigmas configured", train_labels=train_labels)
    metrics.update(_saliency_metrics(checkpoint, ref, out_dir, cfg, seed, notes))
    text = write_outputs(metrics, notes, preds, ref, out_dir, cfg.uncertain)
    print(text)
    return metrics


def _saliency_metrics(checkpoint: Path, ref: ReferenceSet, out_dir: Path, cfg: EvalConfig, seed: int,
                      notes: list[str]) -> dict[str, float | str]:
    """The student's saliency scored against the split's regions, prefixed with the split."""
    def load_model():
        import student

        return student.load(checkpoint)

    found, more = score_student_saliency(load_model, ref, cfg.saliency, seed=seed, out_dir=out_dir)
    notes.extend(more)
    # Wall times differ run to run: kept out of metrics.json, which two runs must reproduce.
    timing = {f"{ref.split}/{k}": found.pop(k) for k in [k for k in found if k.endswith("/seconds_per_map")]}
    if timing and out_dir is not None:
        write_json(Path(out_dir) / "timing.json", timing, sort_keys=True)
    return {f"{ref.split}/{k}": v for k, v in found.items()}


def _thresholds_for_checkpoint(checkpoint: Path, validate_ref: ReferenceSet | None, cfg: EvalConfig):
    saved = scoring.read_thresholds(checkpoint)
    if saved is not None:
        return saved, "the checkpoint's thresholds.json (chosen on validation at training time)"
    if validate_ref is not None:
        val_preds, _, _ = predictions_from_checkpoint(checkpoint, validate_ref, cfg.batch_size)
        return _validation_thresholds(val_preds, validate_ref, cfg, f"the {validate_ref.split!r} split")
    return None, "fixed 0.5 (no thresholds.json and no validation split)"


def _validation_thresholds(preds: Predictions, ref: ReferenceSet, cfg: EvalConfig, where: str):
    y, mask = classification.targets(ref.labels, uncertain=cfg.uncertain)
    t, _, defaulted = scoring.choose_thresholds(preds.probs, y, mask, policy=cfg.threshold_policy)
    extra = f"; 0.5 for {', '.join(defaulted)} (no validation positive)" if defaulted else ""
    rule = "to maximise F1" if cfg.threshold_policy == "f1" else "prevalence-matched"
    return t, f"chosen {rule} on {where}{extra}"


def run_stage(cfg: EvalConfig, ctx) -> dict:
    """Pipeline stage: score the student checkpoint of this run on ``cfg.split``."""
    checkpoint = ctx.stage_dir("student")
    prepared = ctx.stage_dir("prepare")
    prepared = prepared if (prepared / "meta.json").is_file() else None
    ref = load_references(ctx.data, prepared, cfg.split)
    val = _maybe(lambda: load_references(ctx.data, prepared, "validate"))
    train = _maybe(lambda: load_references(ctx.data, prepared, "train"))
    seed = ctx.seed if cfg.seed is None else cfg.seed
    with own_output(ctx.stage_dir("eval"), KIND, MARKERS):
        metrics = evaluate_checkpoint(checkpoint, ref, ctx.stage_dir("eval"), cfg, seed=seed, validate_ref=val,
                                      train_labels=None if train is None else train.labels)
    headline = {k.split("/", 1)[1]: v for k, v in metrics.items()
                if isinstance(v, float) and k.split("/", 1)[1] in _HEADLINE_KEYS}
    return {**headline, "metrics": str(ctx.stage_dir("eval") / "metrics.json")}


_HEADLINE_KEYS = {"auc_micro_14", "baseline/constant_prevalence/auc_micro_14", "auc_macro_14", "auc_micro_5", "f1_micro_14", "bleu_4", "rouge_l", "cider_d",
                  "chexbert_f1/micro_14", "chexpert_rules_f1/micro_14", "chexbert_f1/macro_14",
                  "chexpert_rules_f1/macro_14", "noise_0.05/auc_micro_14", "rationale_consistency/f1",
                  "saliency/attention/energy_pointing_game", "saliency/attention/chance_energy",
                  "saliency/gradcam/energy_pointing_game", "saliency/fused/energy_pointing_game"}


def _maybe(build: Callable[[], ReferenceSet]) -> ReferenceSet | None:
    try:
        return build()
    except DataError:
        return None


def main(argv: list[str] | None = None, prog: str = "kdistill eval") -> int:
    from kdistill.command import add_config_arguments, stage_config

    parser = argparse.ArgumentParser(prog=prog, description="Score a predictions file or a student checkpoint: "
                                     "AUC, F1, report label F1, BLEU/ROUGE-L/CIDEr-D, noise robustness.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help="CSV or JSONL: study_id, the 14 findings, report[, rationale]")
    source.add_argument("--checkpoint", type=Path, help="student checkpoint folder (student.load)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", dest="data_root", type=Path, help="dataset root (see --source)")
    where.add_argument("--prepared", type=Path, help="prepared cache (kdistill data prepare)")
    parser.add_argument("--source", default="mimic", help="layout of --data: mimic (and the phantom), chexpert, ...")
    parser.add_argument("--validate-predictions", type=Path,
                        help="predictions on the validate split: per-finding thresholds are chosen on them (else 0.5)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--allow-missing", action="store_true", help="score only the studies that have predictions")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it holds files that are not an evaluation's")
    # kept one more release; each is the override named in its help
    parser.add_argument("--split", help="deprecated: split=NAME")
    parser.add_argument("--bootstrap", type=int, help="deprecated: n_bootstrap=N")
    parser.add_argument("--noise", type=float, nargs="*", help="deprecated: noise_sigmas=[...]")
    parser.add_argument("--uncertain", choices=("ignore", "ones", "zeros"), help="deprecated: uncertain=...")
    parser.add_argument("--chexbert-checkpoint", help="deprecated: chexbert_checkpoint=PATH")
    parser.add_argument("--chexbert-tokenizer", help="deprecated: chexbert_tokenizer=PATH")
    parser.add_argument("--seed", type=int, help="deprecated: seed=N")
    add_config_arguments(parser, "eval", example="split=validate n_bootstrap=200 batch_size=32")
    args = parser.parse_intermixed_args(argv)
    overwrite = pop_overwrite(args.overrides) or args.overwrite
    if args.checkpoint is not None and args.validate_predictions is not None:
        parser.error("--validate-predictions goes with --predictions; a checkpoint brings its own thresholds.json "
                     "(or is run on the validate split)")
    legacy = {"--split": "split", "--bootstrap": "n_bootstrap", "--noise": "noise_sigmas", "--uncertain": "uncertain",
              "--chexbert-checkpoint": "chexbert_checkpoint", "--chexbert-tokenizer": "chexbert_tokenizer",
              "--seed": "seed"}
    flags = {key: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, key in legacy.items()}
    cfg = stage_config(EvalConfig, args, "eval", flags=flags, deprecated=legacy)
    with own_output(args.out, KIND, MARKERS, overwrite):
        return _score_command(args, cfg)


def _score_command(args: argparse.Namespace, cfg: EvalConfig) -> int:
    from kdistill.command import data_source

    seed = cfg.seed or 0
    data = data_source(args)
    ref = load_references(data, args.prepared, cfg.split)
    train = _maybe(lambda: load_references(data, args.prepared, "train"))
    train_labels = None if train is None else train.labels
    if args.checkpoint is not None:
        val = _maybe(lambda: load_references(data, args.prepared, "validate"))
        evaluate_checkpoint(args.checkpoint, ref, args.out, cfg, seed=seed, validate_ref=val, train_labels=train_labels)
        print(f"wrote {args.out / 'metrics.json'}")
        return 0
    preds, ref, n_missing = align(read_predictions(args.predictions), ref, args.allow_missing)
    thresholds, thresholds_source = None, "fixed 0.5 (no validation predictions given)"
    if args.validate_predictions is not None:
        val_ref = load_references(data, args.prepared, "validate")
        val_preds, val_ref, _ = align(read_predictions(args.validate_predictions), val_ref, allow_missing=True)
        thresholds, thresholds_source = _validation_thresholds(val_preds, val_ref, cfg, str(args.validate_predictions))
    metrics, notes = evaluate(preds, ref, thresholds=thresholds, thresholds_source=thresholds_source,
                              n_bootstrap=cfg.n_bootstrap, seed=seed, uncertain=cfg.uncertain,
                              labeler=_labeler(cfg.chexbert_checkpoint, cfg.chexbert_tokenizer), train_labels=train_labels)
    if cfg.saliency.enabled and cfg.saliency.methods:
        metrics[f"{cfg.split}/skipped/saliency"] = "needs a checkpoint (--checkpoint): the maps come from the model"
    if n_missing:
        metrics[f"{cfg.split}/n_missing_predictions"] = float(n_missing)
        notes.append(f"{n_missing} studies of the split had no prediction and are not scored (--allow-missing).")
    print(write_outputs(metrics, notes, preds, ref, args.out, cfg.uncertain))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0
