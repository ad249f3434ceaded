"""What an evaluated split says of each study: its labels, its reference report, its images.

A :class:`ReferenceSet` comes from a dataset (any ``kdistill.data.sources`` source) or from a
prepared cache; ``eval.run`` aligns predictions with it and scores them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from kdistill.data.sections import report_text
from kdistill.errors import DataError


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
    # rows -> the prepared cache's roi_bits (len(rows), S, S) uint16 (bit j: finding j's expert
    # region, at the cache's image size); None where the split carries no regions
    roi_bits: Callable[[Sequence[int]], np.ndarray] | None = None

    def select(self, rows: Sequence[int]) -> "ReferenceSet":
        rows = list(rows)
        base = self.image_batches
        return ReferenceSet(
            self.source, self.split, [self.study_ids[i] for i in rows], self.labels[rows],
            [self.reports[i] for i in rows],
            None if base is None else (lambda sub, bs, size=None: base([rows[i] for i in sub], bs, size)),
            None if self.roi_bits is None else (lambda sub, _bits=self.roi_bits: _bits([rows[i] for i in sub])),
        )


def references_from_studies(studies: Sequence[Any], root: Path, split: str) -> ReferenceSet:
    """``Study`` rows (any source) -> :class:`ReferenceSet` of ``split`` (images read lazily)."""
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
        [report_text(s.findings, s.impression, headers=False) for s in chosen], image_batches,
    )


def _side_pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def references_from_prepared(prepared: Path, split: str) -> ReferenceSet:
    """A prepared cache's split (``kdistill.data.prepare.load_prepared``) -> :class:`ReferenceSet`."""
    from kdistill.data.prepare import load_prepared, read_batch

    data = load_prepared(prepared)
    if split not in data:
        raise DataError(prepared, f"the prepared cache has no {split!r} split (has {', '.join(data)})")
    table = data[split]
    if len(table) == 0:
        raise DataError(prepared, f"no studies in the {split!r} split")
    text = read_batch(table, slice(0, len(table)), ["study_id", "labels", "findings", "impression"])

    def image_batches(rows: Sequence[int], batch_size: int, size: int | None = None) -> Iterator[np.ndarray]:
        from kdistill.data.images import resize, to_unit_float

        for start in range(0, len(rows), batch_size):
            batch = to_unit_float(read_batch(table, list(rows[start : start + batch_size]), ["image"])["image"])
            if size and batch.shape[-2:] != _side_pair(size):
                batch = np.stack([resize(image, size) for image in batch])
            yield batch

    def roi_bits(rows: Sequence[int]) -> np.ndarray:
        return np.asarray(read_batch(table, list(rows), ["roi_bits"])["roi_bits"], dtype=np.uint16)

    return ReferenceSet(
        str(prepared), split, [str(s) for s in text["study_id"]], np.asarray(text["labels"], dtype=np.float64),
        [report_text(f, i, headers=False) for f, i in zip(text["findings"], text["impression"])], image_batches,
        roi_bits if "roi_bits" in table.column_names else None,
    )


def load_references(data, prepared: Path | None, split: str) -> ReferenceSet:
    """The split from a prepared cache when given, else from ``data`` (a ``DataSource``)."""
    if prepared is not None:
        return references_from_prepared(prepared, split)
    if data is None:
        raise DataError(None, "give a dataset root or a prepared cache to read the references from")
    return references_from_studies(data.load_studies(splits=[split]), data.root, split)
