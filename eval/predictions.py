"""A model's outputs for the studies of a split: read from a predictions file (CSV or JSONL) or
produced by running a student checkpoint, and aligned with the split's references."""
from __future__ import annotations

import collections
import csv
import dataclasses
import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from eval.references import ReferenceSet
from kdistill.errors import DataError
from kdistill.labels import FINDINGS, NUM_FINDINGS

REPORT_COLUMNS = ("report", "generated_report")
RATIONALE_COLUMN = "rationale"


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


# --------------------------------------------------------------------------- predictions files


def read_predictions(path: str | Path) -> Predictions:
    """A CSV or JSONL predictions file -> :class:`Predictions`; any problem is a ``DataError``."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; --predictions takes a CSV or JSONL file")
    if not path.is_file():
        raise DataError(path, "predictions file not found")
    try:
        rows = _read_jsonl(path) if path.suffix.lower() in (".jsonl", ".json") else _read_csv(path)
    except UnicodeDecodeError as err:
        raise DataError(path, _not_utf8(path, err)) from None
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


def _not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    with path.open("rb") as fh:
        head = fh.read(4)
    guess = ("it looks like UTF-16 (it starts with a byte-order mark)" if head[:2] in (b"\xff\xfe", b"\xfe\xff")
             else f"byte {err.object[err.start]:#04x} at offset {err.start} is not UTF-8 (latin-1 / Windows-1252?)")
    return f"not UTF-8 text: {guess}; save the file as UTF-8"


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    # utf-8-sig: a UTF-8 byte-order mark (as spreadsheet programs write) is not part of the header
    with path.open(newline="", encoding="utf-8-sig") as fh:
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
    with path.open(encoding="utf-8-sig") as fh:
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


# --------------------------------------------------------------------------- checkpoints


def predictions_from_checkpoint(
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
    writes = getattr(model, "has_text", True)  # a student without text writes no report: report metrics skip
    preds = Predictions(str(checkpoint), list(ref.study_ids), np.concatenate(probs), reports if writes else None,
                        rationales if writes else None)
    _refuse_nonfinite(preds)

    # the noise study needs probabilities only: skip text generation when the model allows it
    quiet = {"texts": False} if "texts" in inspect.signature(model.predict).parameters else {}

    def predict_probs(images: np.ndarray) -> np.ndarray:
        out = np.asarray(model.predict(images, **quiet)["probs"], dtype=np.float64)
        if not np.isfinite(out).all():
            raise DataError(checkpoint, "the model gave non-finite probabilities on noisy images")
        return out

    return preds, predict_probs, lambda: _batches(ref, rows, batch_size, size)


def _refuse_nonfinite(preds: Predictions) -> None:
    """NaN probabilities are refused where they would become metrics or files, naming the studies."""
    bad = [s for s, row in zip(preds.study_ids, preds.probs) if not np.isfinite(row).all()]
    if bad:
        raise DataError(preds.source, f"the model gave non-finite probabilities for {len(bad)} studies "
                                      f"(e.g. {', '.join(bad[:5])}); check their images")


def _batches(ref: ReferenceSet, rows: Sequence[int], batch_size: int, size: int | None) -> Iterator[np.ndarray]:
    if ref.image_batches is None:
        raise DataError(ref.source, "no images to run the model on")
    yield from ref.image_batches(rows, batch_size, size)
