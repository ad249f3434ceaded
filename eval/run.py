"""``kdistill eval``: score a predictions file or a student checkpoint on one split.

Inputs: a predictions file (CSV or JSONL; one row per study: ``study_id``, the 14 probabilities
named by ``kdistill.labels.FINDINGS``, the generated ``report``, optionally a ``rationale``) or a
student checkpoint (``student.load``), plus the dataset root (``kdistill.data.mimic``) or a
prepared cache whose split holds the reference labels and reports.

Outputs in ``--out``: ``metrics.json`` (flat: every number named with split and variant, e.g.
``test/auc_micro_14``, ``test/auc/Edema``, ``test/noise_0.05/auc_micro_14``,
``test/chexpert_rules_f1/micro_14``, ``test/bleu_4``; skips as ``test/skipped/...`` with the
reason), ``summary.md`` (printed too), ``roc.png`` and ``reliability.png``.

Operating points: per-finding thresholds maximising F1 on validation predictions when given
(``--validate-predictions``, or the checkpoint's ``thresholds.json`` / its validation split);
otherwise 0.5, and the outputs say so. Noise robustness (Gaussian noise on the images, sigma in
``--noise``) needs a model, so it runs only from a checkpoint; from a predictions file it is
skipped by name.
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import inspect
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

from eval import classification, label_f1, nlg
from kdistill.config import write_text_atomic
from kdistill.errors import DataError
from kdistill.labels import FINDINGS, NUM_FINDINGS

log = logging.getLogger(__name__)

DEFAULT_SIGMAS = (0.01, 0.05, 0.1)
REPORT_COLUMNS = ("report", "generated_report")
RATIONALE_COLUMN = "rationale"
METEOR_NOTE = "not computed: its reference implementation needs Java and WordNet, which kdistill does not ship"


@dataclasses.dataclass
class Predictions:
    """A model's outputs for some studies, rows aligned."""

    source: str  # file (or checkpoint) they came from, for error messages
    study_ids: list[str]
    probs: np.ndarray  # (n, 14) in [0, 1]
    reports: list[str] | None = None
    rationales: list[str] | None = None

    def select(self, rows: Sequence[int]) -> "Predictions":
        rows = list(rows)
        return Predictions(
            self.source,
            [self.study_ids[i] for i in rows],
            self.probs[rows],
            None if self.reports is None else [self.reports[i] for i in rows],
            None if self.rationales is None else [self.rationales[i] for i in rows],
        )


@dataclasses.dataclass
class ReferenceSet:
    """What the evaluated split says of each study: labels and reference report."""

    source: str  # dataset root or prepared cache
    split: str
    study_ids: list[str]
    labels: np.ndarray  # (n, 14) raw 1/0/-1/NaN
    reports: list[str]
    # (rows, batch size, side or None) -> float images in [0, 1], (B, H, W), in row order
    image_batches: Callable[[Sequence[int], int, int | None], Iterator[np.ndarray]] | None = None

    def select(self, rows: Sequence[int]) -> "ReferenceSet":
        rows = list(rows)
        base = self.image_batches
        return ReferenceSet(
            self.source, self.split, [self.study_ids[i] for i in rows], self.labels[rows],
            [self.reports[i] for i in rows],
            None if base is None else (lambda sub, bs, size=None: base([rows[i] for i in sub], bs, size)),
        )


# --------------------------------------------------------------------------- predictions files


def read_predictions(path: str | Path) -> Predictions:
    """A CSV or JSONL predictions file -> :class:`Predictions`; any problem is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "predictions file not found")
    rows = _read_jsonl(path) if path.suffix.lower() in (".jsonl", ".json") else _read_csv(path)
    if not rows:
        raise DataError(path, "no predictions in the file")
    ids: list[str] = []
    probs = np.zeros((len(rows), NUM_FINDINGS))
    reports: list[str] = []
    rationales: list[str] = []
    report_key = next((k for k in REPORT_COLUMNS if k in rows[0][1]), None)
    has_rationale = RATIONALE_COLUMN in rows[0][1]
    for r, (line, row) in enumerate(rows):
        where = f"line {line}"
        study_id = str(row.get("study_id", "") or "").strip()
        if not study_id:
            raise DataError(path, f"{where}: no study_id")
        where += f" (study {study_id})"
        ids.append(study_id)
        probs[r] = _row_probabilities(path, where, row)
        if report_key is not None:
            text = row.get(report_key)
            reports.append("" if text is None else str(text))
        if has_rationale:
            rationales.append(str(row.get(RATIONALE_COLUMN) or ""))
    counts = collections.Counter(ids)
    duplicates = sorted(s for s, c in counts.items() if c > 1)
    if duplicates:
        raise DataError(path, f"study ids appear more than once: {', '.join(duplicates[:5])}")
    if report_key is not None:
        empty = [s for s, text in zip(ids, reports) if not text.strip()]
        if empty:
            raise DataError(path, f"{len(empty)} empty generated report(s), e.g. study {', '.join(empty[:5])}; "
                                  f"every row needs a non-empty '{report_key}' (or drop the column to skip report metrics)")
    return Predictions(str(path), ids, probs, reports if report_key else None, rationales if has_rationale else None)


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(path, "empty file (no header)")
        header = [h.strip() for h in header]
        _check_columns(path, header)
        rows = []
        for values in reader:
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(path, f"line {reader.line_num}: {len(values)} fields but the header has {len(header)}")
            rows.append((reader.line_num, dict(zip(header, values))))
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with path.open() as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"line {line_no}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, f"line {line_no}: expected a JSON object")
            probs = row.pop("probs", None)  # also accepted: "probs" as a list of 14 or a {finding: p} map
            if isinstance(probs, dict):
                row.update(probs)
            elif isinstance(probs, list):
                if len(probs) != NUM_FINDINGS:
                    raise DataError(path, f"line {line_no}: 'probs' has {len(probs)} values, expected {NUM_FINDINGS}")
                row.update(zip(FINDINGS, probs))
            if not rows:
                _check_columns(path, list(row))
            rows.append((line_no, row))
    return rows


def _check_columns(path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in ("study_id", *FINDINGS) if c not in columns]
    if missing:
        raise DataError(path, f"missing column(s): {', '.join(missing)}; expected study_id, the 14 findings "
                              f"({', '.join(FINDINGS)}), report and optionally rationale")


def _row_probabilities(path: Path, where: str, row: dict[str, Any]) -> np.ndarray:
    out = np.zeros(NUM_FINDINGS)
    for j, finding in enumerate(FINDINGS):
        if finding not in row:
            raise DataError(path, f"{where}: no probability for {finding!r}")
        raw = row[finding]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DataError(path, f"{where}: probability for {finding!r} is {raw!r}, not a number") from None
        if not math.isfinite(value):
            raise DataError(path, f"{where}: probability for {finding!r} is {value} (NaN/inf are not allowed)")
        if not 0.0 <= value <= 1.0:
            raise DataError(path, f"{where}: probability for {finding!r} is {value}, outside [0, 1]")
        out[j] = value
    return out


def align(preds: Predictions, ref: ReferenceSet, allow_missing: bool = False) -> tuple[Predictions, ReferenceSet, int]:
    """Rows of ``preds`` and ``ref`` in the same study order. Unknown study ids are an error;
    studies of the split without a prediction are an error unless ``allow_missing`` (then counted)."""
    index = {s: i for i, s in enumerate(ref.study_ids)}
    unknown = [s for s in preds.study_ids if s not in index]
    if unknown:
        raise DataError(preds.source, f"{len(unknown)} study id(s) not in the {ref.split!r} split of {ref.source}: "
                                      f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    covered = set(preds.study_ids)
    missing = [s for s in ref.study_ids if s not in covered]
    if missing and not allow_missing:
        raise DataError(preds.source, f"no prediction for {len(missing)} of the {len(ref.study_ids)} studies of the "
                                      f"{ref.split!r} split (e.g. {', '.join(missing[:5])}); pass --allow-missing to "
                                      f"score the covered studies only")
    rows = [index[s] for s in preds.study_ids]
    return preds, ref.select(rows), len(missing)


# --------------------------------------------------------------------------- references


def _reference_text(findings: str, impression: str) -> str:
    return " ".join(part.strip() for part in (findings or "", impression or "") if part and part.strip())


def references_from_studies(studies: Sequence[Any], root: Path, split: str) -> ReferenceSet:
    """Studies from ``kdistill.data.mimic.load_studies`` -> :class:`ReferenceSet` (images read lazily)."""
    chosen = [s for s in studies if s.split == split]
    if not chosen:
        raise DataError(root, f"no studies in the {split!r} split")

    def image_batches(rows: Sequence[int], batch_size: int, size: int | None = None) -> Iterator[np.ndarray]:
        from kdistill.data.images import read_image, resize

        for start in range(0, len(rows), batch_size):
            batch = []
            for i in rows[start : start + batch_size]:
                path = Path(chosen[i].image_paths[0])
                image = read_image(path if path.is_absolute() else Path(root) / path)
                batch.append(resize(image, size) if size else image)
            yield np.stack(batch)

    return ReferenceSet(
        str(root), split, [str(s.study_id) for s in chosen],
        np.asarray([s.labels for s in chosen], dtype=np.float64),
        [_reference_text(s.findings, s.impression) for s in chosen], image_batches,
    )


def _side_pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def references_from_prepared(prepared: Path, split: str) -> ReferenceSet:
    """A prepared cache's split (``kdistill.data.prepare.load_prepared``) -> :class:`ReferenceSet`."""
    from kdistill.data.prepare import load_prepared

    data = load_prepared(prepared)
    if split not in data:
        raise DataError(prepared, f"the prepared cache has no {split!r} split (has {', '.join(data)})")
    table = data[split]
    if len(table) == 0:
        raise DataError(prepared, f"no studies in the {split!r} split")
    text = table.select_columns(["study_id", "labels", "findings", "impression"]).with_format("numpy")[:]

    def image_batches(rows: Sequence[int], batch_size: int, size: int | None = None) -> Iterator[np.ndarray]:
        from kdistill.data.images import resize

        images = table.select_columns(["image"]).with_format("numpy")
        for start in range(0, len(rows), batch_size):
            batch = np.stack(images.select(list(rows[start : start + batch_size]))["image"]).astype(np.float32) / 255.0
            if size and batch.shape[-2:] != _side_pair(size):
                batch = np.stack([resize(image, size) for image in batch])
            yield batch

    return ReferenceSet(
        str(prepared), split, [str(s) for s in text["study_id"]], np.asarray(np.stack(text["labels"]), dtype=np.float64),
        [_reference_text(f, i) for f, i in zip(text["findings"], text["impression"])], image_batches,
    )


# --------------------------------------------------------------------------- checkpoints


def _predictions_from_checkpoint(
    checkpoint: Path, ref: ReferenceSet, batch_size: int = 8
) -> tuple[Predictions, Callable[[np.ndarray], np.ndarray], Callable[[], Iterator[np.ndarray]]]:
    """Run a student checkpoint over ``ref``'s images. Returns the predictions, an
    ``images -> probs`` function and the image batches (at the model's size) for the noise study."""
    import student  # lazy: only checkpoints need torch and the student package

    if ref.image_batches is None:
        raise DataError(ref.source, "no images to run the checkpoint on")
    model = student.load(checkpoint)
    size = getattr(model, "image_size", None)
    probs, reports, rationales = [], [], []
    rows = list(range(len(ref.study_ids)))
    for images in _batches(ref, rows, batch_size, size):
        result = model.predict(images)
        probs.append(np.asarray(result["probs"], dtype=np.float64))
        reports += [str(r) for r in result.get("reports") or [""] * len(images)]
        rationales += [str(r) for r in result.get("rationales") or [""] * len(images)]
    preds = Predictions(str(checkpoint), list(ref.study_ids), np.concatenate(probs), reports, rationales)

    # the noise study needs probabilities only: skip text generation when the model allows it
    quiet = {"texts": False} if "texts" in inspect.signature(model.predict).parameters else {}

    def predict_probs(images: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(images, **quiet)["probs"], dtype=np.float64)

    return preds, predict_probs, lambda: _batches(ref, rows, batch_size, size)


def _batches(ref: ReferenceSet, rows: Sequence[int], batch_size: int, size: int | None) -> Iterator[np.ndarray]:
    if ref.image_batches is None:
        raise DataError(ref.source, "no images to run the model on")
    yield from ref.image_batches(rows, batch_size, size)


def checkpoint_thresholds(checkpoint: Path) -> np.ndarray | None:
    """The checkpoint's ``thresholds.json`` ({finding: t} or a list of 14) if it has one."""
    path = Path(checkpoint) / "thresholds.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"]
    if isinstance(data, dict):
        missing = [f for f in FINDINGS if f not in data]
        if missing:
            raise DataError(path, f"no threshold for {', '.join(missing)}")
        return np.array([float(data[f]) for f in FINDINGS])
    if isinstance(data, list) and len(data) == NUM_FINDINGS:
        return np.array([float(v) for v in data])
    raise DataError(path, f"expected {{finding: threshold}} or a list of {NUM_FINDINGS} thresholds")


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
    out: dict[str, float | str] = {}
    for k, sigma in enumerate(sigmas):
        rng = np.random.default_rng([seed, k])
        probs = []
        for images in image_batches():
            images = np.asarray(images)
            images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
            noisy = np.clip(images + rng.normal(0.0, sigma, images.shape).astype(np.float32), 0.0, 1.0)
            probs.append(np.asarray(predict_probs(noisy), dtype=np.float64))
        metrics = classification.classification_metrics(
            np.concatenate(probs), labels, thresholds=thresholds, uncertain=uncertain, n_bootstrap=n_bootstrap, seed=seed)
        out.update({f"noise_{sigma:g}/{key}": value for key, value in metrics.items()})
    return out


_HEADER = re.compile(r"\b(?:findings|impression)\s*:\s*", re.IGNORECASE)


def _strip_headers(text: str) -> str:
    """Section headers are layout, not content: leave them out of NLG overlap."""
    return _HEADER.sub(" ", text).strip()


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
) -> tuple[dict[str, float | str], list[str]]:
    """Every metric of one split, flat and prefixed ``<split>/``, and notes for the summary.
    ``preds`` and ``ref`` must be aligned (see :func:`align`). ``noise``: (images -> probs, a
    function yielding the split's images in row order, sigmas) for the robustness study."""
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
    m.update(nlg.nlg_metrics([_strip_headers(g) for g in generated], [_strip_headers(r) for r in references]))
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
                                   for k, v in label_f1.rationale_consistency(said, ref.labels[rows]).items()}
    out["rationale_consistency/n_rationales"] = float(len(rows))
    return out


def _labeler(chexbert_checkpoint: str | None, chexbert_tokenizer: str | None):
    try:
        return label_f1.get_labeler(chexbert_checkpoint, chexbert_tokenizer)
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
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    y, mask = classification.targets(ref.labels, uncertain=uncertain)
    report.plot_roc(preds.probs, y, mask, out_dir / "roc.png")
    report.plot_reliability(preds.probs, y, mask, out_dir / "reliability.png")
    notes = [*notes, "Plots: roc.png (ROC per finding), reliability.png (reliability diagram over every counted label)."]
    return report.write_summary(metrics, ref.split, out_dir, notes)


# --------------------------------------------------------------------------- command and stage


@dataclasses.dataclass
class StageConfig:
    split: str = "test"
    n_bootstrap: int = 1000
    noise_sigmas: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_SIGMAS))
    uncertain: Literal["ignore", "ones", "zeros"] = "ignore"  # how uncertain (-1) study labels count in AUC/F1
    chexbert_checkpoint: str | None = None
    chexbert_tokenizer: str | None = None
    batch_size: int = 8

    def validate(self) -> None:
        if self.uncertain not in ("ignore", "ones", "zeros"):
            raise ValueError(f"uncertain must be ignore, ones or zeros, got {self.uncertain!r}")
        if self.n_bootstrap < 0:
            raise ValueError("n_bootstrap must be >= 0")
        if any(s <= 0 for s in self.noise_sigmas):
            raise ValueError("noise_sigmas must be positive")


def evaluate_checkpoint(checkpoint: Path, ref: ReferenceSet, out_dir: Path, cfg: StageConfig, seed: int = 0,
                        validate_ref: ReferenceSet | None = None) -> dict[str, float | str]:
    """Score a student checkpoint: predictions, thresholds, noise robustness, outputs."""
    preds, predict_probs, image_batches = _predictions_from_checkpoint(checkpoint, ref, cfg.batch_size)
    thresholds, source = _thresholds_for_checkpoint(checkpoint, validate_ref, cfg)
    metrics, notes = evaluate(preds, ref, thresholds=thresholds, thresholds_source=source, n_bootstrap=cfg.n_bootstrap,
                              seed=seed, uncertain=cfg.uncertain,
                              labeler=_labeler(cfg.chexbert_checkpoint, cfg.chexbert_tokenizer),
                              noise=(predict_probs, image_batches, cfg.noise_sigmas) if cfg.noise_sigmas else None,
                              noise_skip_reason="no noise sigmas configured")
    text = write_outputs(metrics, notes, preds, ref, out_dir, cfg.uncertain)
    print(text)
    return metrics


def _thresholds_for_checkpoint(checkpoint: Path, validate_ref: ReferenceSet | None, cfg: StageConfig):
    saved = checkpoint_thresholds(checkpoint)
    if saved is not None:
        return saved, f"the checkpoint's thresholds.json (chosen on validation at training time)"
    if validate_ref is not None:
        val_preds, _, _ = _predictions_from_checkpoint(checkpoint, validate_ref, cfg.batch_size)
        y, mask = classification.targets(validate_ref.labels, uncertain=cfg.uncertain)
        t, defaulted = classification.choose_thresholds(val_preds.probs, y, mask)
        extra = f"; 0.5 for {', '.join(defaulted)} (no validation positive)" if defaulted else ""
        return t, f"chosen to maximise F1 on the {validate_ref.split!r} split{extra}"
    return None, "fixed 0.5 (no thresholds.json and no validation split)"


def run_stage(cfg: StageConfig, ctx) -> dict:
    """Pipeline stage: score the student checkpoint of this run on ``cfg.split``."""
    checkpoint = ctx.stage_dir("student")
    prepared = ctx.stage_dir("prepare")
    if (prepared / "meta.json").is_file():
        ref = references_from_prepared(prepared, cfg.split)
        val = _maybe(lambda: references_from_prepared(prepared, "validate"))
    else:
        from kdistill.data.mimic import load_studies

        studies = load_studies(ctx.data_root, splits=[cfg.split, "validate"])
        ref = references_from_studies(studies, ctx.data_root, cfg.split)
        val = _maybe(lambda: references_from_studies(studies, ctx.data_root, "validate"))
    metrics = evaluate_checkpoint(checkpoint, ref, ctx.stage_dir("eval"), cfg, seed=ctx.seed, validate_ref=val)
    headline = {k.split("/", 1)[1]: v for k, v in metrics.items()
                if isinstance(v, float) and k.split("/", 1)[1] in _HEADLINE_KEYS}
    return {**headline, "metrics": str(ctx.stage_dir("eval") / "metrics.json")}


_HEADLINE_KEYS = {"auc_micro_14", "auc_macro_14", "auc_micro_5", "f1_micro_14", "bleu_4", "rouge_l", "cider_d",
                  "chexbert_f1/micro_14", "chexpert_rules_f1/micro_14", "chexbert_f1/macro_14",
                  "chexpert_rules_f1/macro_14", "noise_0.05/auc_micro_14"}


def _maybe(build: Callable[[], ReferenceSet]) -> ReferenceSet | None:
    try:
        return build()
    except DataError:
        return None


def _load_reference(data: Path | None, prepared: Path | None, split: str) -> ReferenceSet:
    if prepared is not None:
        return references_from_prepared(prepared, split)
    assert data is not None
    from kdistill.data.mimic import load_studies

    return references_from_studies(load_studies(data, splits=[split]), data, split)


def main(argv: list[str] | None = None, prog: str = "kdistill eval") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Score a predictions file or a student checkpoint: "
                                     "AUC, F1, report label F1, BLEU/ROUGE-L/CIDEr-D, noise robustness.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", type=Path, help="CSV or JSONL: study_id, the 14 findings, report[, rationale]")
    source.add_argument("--checkpoint", type=Path, help="student checkpoint folder (student.load)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="dataset root (MIMIC-CXR-JPG layout)")
    where.add_argument("--prepared", type=Path, help="prepared cache (kdistill data prepare)")
    parser.add_argument("--validate-predictions", type=Path,
                        help="predictions on the validate split: per-finding thresholds are chosen on them (else 0.5)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUC CIs (0: none)")
    parser.add_argument("--noise", type=float, nargs="*", default=list(DEFAULT_SIGMAS),
                        help="Gaussian noise sigmas for the robustness study (checkpoint only)")
    parser.add_argument("--uncertain", choices=("ignore", "ones", "zeros"), default="ignore",
                        help="how uncertain (-1) study labels count in AUC/F1 (default: left out)")
    parser.add_argument("--chexbert-checkpoint", help="CheXbert checkpoint: report F1 becomes chexbert_f1")
    parser.add_argument("--chexbert-tokenizer", help="tokenizer folder for the CheXbert checkpoint")
    parser.add_argument("--allow-missing", action="store_true", help="score only the studies that have predictions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.validate_predictions is not None:
        parser.error("--validate-predictions goes with --predictions; a checkpoint brings its own thresholds.json "
                     "(or is run on the validate split)")
    cfg = StageConfig(split=args.split, n_bootstrap=args.bootstrap, noise_sigmas=list(args.noise),
                      uncertain=args.uncertain, chexbert_checkpoint=args.chexbert_checkpoint,
                      chexbert_tokenizer=args.chexbert_tokenizer)
    cfg.validate()
    ref = _load_reference(args.data, args.prepared, args.split)
    if args.checkpoint is not None:
        val = _maybe(lambda: _load_reference(args.data, args.prepared, "validate"))
        evaluate_checkpoint(args.checkpoint, ref, args.out, cfg, seed=args.seed, validate_ref=val)
        print(f"wrote {args.out / 'metrics.json'}")
        return 0
    preds, ref, n_missing = align(read_predictions(args.predictions), ref, args.allow_missing)
    thresholds, thresholds_source = None, "fixed 0.5 (no validation predictions given)"
    if args.validate_predictions is not None:
        val_ref = _load_reference(args.data, args.prepared, "validate")
        val_preds, val_ref, _ = align(read_predictions(args.validate_predictions), val_ref, allow_missing=True)
        y, mask = classification.targets(val_ref.labels, uncertain=args.uncertain)
        thresholds, defaulted = classification.choose_thresholds(val_preds.probs, y, mask)
        thresholds_source = f"chosen to maximise F1 on {args.validate_predictions}"
        if defaulted:
            thresholds_source += f"; 0.5 for {', '.join(defaulted)} (no validation positive)"
    metrics, notes = evaluate(preds, ref, thresholds=thresholds, thresholds_source=thresholds_source,
                              n_bootstrap=args.bootstrap, seed=args.seed, uncertain=args.uncertain,
                              labeler=_labeler(args.chexbert_checkpoint, args.chexbert_tokenizer))
    if n_missing:
        metrics[f"{args.split}/n_missing_predictions"] = float(n_missing)
        notes.append(f"{n_missing} studies of the split had no prediction and are not scored (--allow-missing).")
    print(write_outputs(metrics, notes, preds, ref, args.out, args.uncertain))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0
