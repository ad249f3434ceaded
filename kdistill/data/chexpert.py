"""CheXpert (v1.0 / v1.0-small) loader: train.csv / valid.csv -> ``Study`` records.

The CSVs have one row per image: ``Path`` (e.g.
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), ``Frontal/Lateral``,
``AP/PA`` and the 14 findings (same names as MIMIC, another column order; 1.0/0.0/-1.0/blank).
``ROOT`` is the folder holding the CSVs (each may be gzipped); a ``Path`` is resolved against ROOT, or ROOT's parent
(paths start with the dataset folder's name), or ROOT with the first component dropped.

Ids: subject ``patient00001``, study ``patient00001_study1``. Splits: train.csv -> "train",
valid.csv -> "validate", test.csv (if present) -> "test". View: the AP/PA column for frontal
images (AP, PA, or blank -> "FRONTAL"), "LATERAL" for laterals. CheXpert ships no reports:
findings and impression are empty.
"""
from __future__ import annotations

import collections
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from kdistill.data.mimic import normalize_id, read_table
from kdistill.data.sources import Source, register
from kdistill.data.study import Study
from kdistill.errors import DataError, SkipCounter
from kdistill.labels import FINDINGS, parse_label

CSV_FILES = {"train": "train.csv", "validate": "valid.csv", "test": "test.csv"}
REQUIRED = ("Path", "Frontal/Lateral", "AP/PA")


def load_chexpert(
    root: str | Path,
    splits: Iterable[str] | None = None,
    views: Sequence[str] | None = ("PA", "AP"),
    images: str = "first",
    on_error: str = "raise",
    *,
    counter: SkipCounter | None = None,
    check_images: bool = True,
) -> list[Study]:
    """CheXpert root -> list of ``Study``; arguments as ``kdistill.data.mimic.load_studies``."""
    root = Path(root)
    if images not in ("first", "all"):
        raise ValueError(f"images must be 'first' or 'all', got {images!r}")
    counter = counter or SkipCounter(on_error)
    wanted = list(CSV_FILES) if splits is None else list(splits)
    view_rank = None if views is None else {v.upper(): i for i, v in enumerate(views)}
    studies: list[Study] = []
    for split in wanted:
        if split not in CSV_FILES:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(CSV_FILES)}")
        path = root / CSV_FILES[split]
        if not path.is_file() and path.with_name(path.name + ".gz").is_file():
            path = path.with_name(path.name + ".gz")
        if not path.is_file():
            if split == "test" and splits is None:
                continue  # the public release has no test labels
            raise DataError(path, "file not found (looked for .csv and .csv.gz)")
        rows = read_table(path, REQUIRED + FINDINGS, counter)
        resolve = _Resolver(root)
        grouped: dict[str, list[tuple[str, str, dict[str, str]]]] = collections.OrderedDict()
        for row in rows:
            rel = row["Path"].strip()
            parts = rel.replace("\\", "/").split("/")
            if len(parts) < 3 or not parts[-3].startswith("patient") or not parts[-2].startswith("study"):
                counter(DataError(path, f"line {row['_line']}: Path {rel!r} is not .../patientN/studyN/view.jpg"),
                        kind="bad_path")
                continue
            view = _view(row)
            if view_rank is not None and view not in view_rank:
                continue
            study_id = f"{parts[-3]}_{parts[-2]}"
            grouped.setdefault(study_id, []).append((view, resolve(rel, parts), row))
        for study_id, items in grouped.items():
            study = _build(path, study_id, split, items, view_rank, images, counter, check_images)
            if study is not None:
                studies.append(study)
    return studies


def _view(row: dict[str, str]) -> str:
    if row["Frontal/Lateral"].strip().lower() == "lateral":
        return "LATERAL"
    return row["AP/PA"].strip().upper() or "FRONTAL"


class _Resolver:
    """A CSV ``Path`` -> the image file: ROOT/Path, ROOT's parent/Path, or ROOT/Path without its
    first component (the dataset folder's name, ``CheXpert-v1.0-small/train/...``). The first form
    that finds a file is used for every later row of the file (one stat per row at most, not three,
    on 200k rows)."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.rule: int | None = None
        self.misses = 0

    def _candidate(self, rule: int, rel: str, parts: list[str]) -> str:
        if rule == 0:
            return os.path.join(self.root, rel)
        if rule == 1:
            return os.path.join(os.path.dirname(self.root), rel)
        return os.path.join(self.root, *parts[1:])

    def __call__(self, rel: str, parts: list[str]) -> str:
        if self.rule is not None:
            return self._candidate(self.rule, rel, parts)
        for rule in (0, 1, 2):
            candidate = self._candidate(rule, rel, parts)
            if os.path.isfile(candidate):
                self.rule, self.misses = rule, 0
                return candidate
        # not on disk: the dataset folder's name as first component means ROOT is that folder; after
        # 32 misses in a row (images elsewhere, or not checked) stop probing
        fallback = 2 if parts and parts[0] == os.path.basename(self.root) else 0
        self.misses += 1
        if self.misses >= 32:
            self.rule = fallback
        return self._candidate(fallback, rel, parts)


def _build(csv_path, study_id, split, items, view_rank, images, counter, check_images):
    if view_rank is not None:
        items = sorted(items, key=lambda it: view_rank[it[0]])
    kept = []
    for view, image_path, row in items:
        if check_images and not os.path.isfile(image_path):
            counter(DataError(image_path, f"image of study {study_id} not found"), kind="missing_image")
            continue
        kept.append((view, image_path, row))
        if images == "first":
            break
    if not kept:
        counter(DataError(csv_path, f"study {study_id}: no readable image left"), kind="study_without_images")
        return None
    row = kept[0][2]
    labels = []
    for name in FINDINGS:
        try:
            labels.append(parse_label(row[name]))
        except ValueError:
            counter(DataError(csv_path, f"line {row['_line']}: {name} = {row[name]!r} is not 1, 0, -1 or blank"),
                    kind="bad_label")
            return None
    subject_id = study_id.split("_")[0]
    return Study(
        study_id=normalize_id(study_id),
        subject_id=subject_id,
        split=split,
        image_paths=[p for _, p, _ in kept],
        view=kept[0][0],
        labels=labels if labels else [math.nan] * len(FINDINGS),
        dicom_ids=[os.path.splitext(os.path.basename(p))[0] for _, p, _ in kept],
    )


register(Source(
    name="chexpert",
    loader=load_chexpert,
    index_files=(*CSV_FILES.values(), *(f"{name}.gz" for name in CSV_FILES.values())),
    has_reports=False,
    description="CheXpert v1.0 / v1.0-small (train.csv, valid.csv)",
))
