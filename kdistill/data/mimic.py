"""MIMIC-CXR-JPG v2 loader: CSVs + reports + image paths (+ expert regions) -> ``Study`` records.

Layout (DESIGN.md, "On-disk layout")::

    ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    ROOT/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, 14 findings (1.0 / 0.0 / -1.0 / blank)
    ROOT/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
    ROOT/files/pNN/pSUBJECT/sSTUDY/DICOM.jpg and ROOT/files/pNN/pSUBJECT/sSTUDY.txt
    ROOT/rois.jsonl                          optional expert regions (kdistill.data.rois)
    ROOT/mimic-cxr-2.0.0-negbio.csv[.gz]     optional second labeler's labels (``labels="negbio"``)

The real MIMIC-CXR-JPG project ships no report texts: they are the separate MIMIC-CXR project's
``mimic-cxr-reports.zip`` (``files/pNN/pSUBJECT/sSTUDY.txt``). ``reports_root`` points at that
folder (the one holding ``files/``, or ``files/`` itself); without it reports are read beside
the images, as in the phantom. A study whose report is missing is an error naming the file, or
with ``on_error="skip"`` a counted skip (``missing_report``); the log says how many.

Each CSV may be gzipped or not (``.csv.gz`` is looked for first). Labels stay raw
(1/0/-1/NaN); consumers apply a policy with ``kdistill.labels.apply_policy``. A study absent
from the chexpert CSV gets all-NaN labels (MIMIC leaves some studies unlabelled).

Problems raise ``DataError`` naming the file and the problem, or with ``on_error="skip"`` are
counted by kind in a ``SkipCounter`` (pass your own ``counter`` to read the counts).
"""
from __future__ import annotations

import collections
import csv
import gzip
import io
import logging
import math
import zlib
from pathlib import Path
from typing import Iterable, Sequence

from kdistill.data.sections import extract_sections
from kdistill.data.sources import Source, register
from kdistill.data.study import Roi, Study
from kdistill.errors import DataError, SkipCounter
from kdistill.labels import FINDINGS, parse_label

log = logging.getLogger(__name__)

METADATA = "mimic-cxr-2.0.0-metadata"
CHEXPERT = "mimic-cxr-2.0.0-chexpert"
NEGBIO = "mimic-cxr-2.0.0-negbio"  # same columns, labels of the NegBio labeler
LABEL_TABLES = {"chexpert": CHEXPERT, "negbio": NEGBIO}
SPLIT = "mimic-cxr-2.0.0-split"
ROIS = "rois.jsonl"
SPLITS = ("train", "validate", "test")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
CHEXPERT_COLUMNS = ("subject_id", "study_id", *FINDINGS)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")


def find_table(root: str | Path, stem: str) -> Path:
    """``ROOT/stem.csv.gz`` or ``ROOT/stem.csv``; ``DataError`` when neither exists."""
    root = Path(root)
    for suffix in (".csv.gz", ".csv"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    raise DataError(root / f"{stem}.csv.gz", "file not found (looked for .csv.gz and .csv)")


def read_table(path: str | Path, required: Sequence[str], counter: SkipCounter | None = None) -> list[dict[str, str]]:
    """Read a CSV (gzipped when its name ends in .gz) -> rows as dicts with a ``_line`` key.

    A missing required column, a damaged gzip stream or undecodable bytes is a ``DataError``
    (the whole file is unusable). A row with the wrong number of fields is a ``DataError`` or,
    through ``counter`` in skip mode, counted as ``malformed_row`` and left out.
    """
    path = Path(path)
    counter = counter or SkipCounter("raise")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(path, f"damaged or truncated gzip stream: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text: {err}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, "empty file (no header row)") from None
    except csv.Error as err:
        raise DataError(path, f"malformed CSV header: {err}") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; found {', '.join(header)}")
    rows = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            counter(DataError(path, f"line {reader.line_num}: malformed CSV: {err}"), kind="malformed_row")
            continue
        if not fields:
            continue  # blank line
        if len(fields) != len(header):
            counter(DataError(path, f"line {reader.line_num}: expected {len(header)} fields, got {len(fields)}"),
                    kind="malformed_row")
            continue
        row = dict(zip(header, fields))
        row["_line"] = str(reader.line_num)
        rows.append(row)
    return rows


def normalize_id(value: str) -> str:
    """'10000032', ' 10000032 ', '10000032.0' (a float-written CSV) -> '10000032'."""
    value = value.strip()
    if value.endswith(".0") and value[:-2].isdigit():
        value = value[:-2]
    return value


def study_dir(root: str | Path, subject_id: str, study_id: str) -> Path:
    return Path(root) / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def reports_folder(root: str | Path, reports_root: str | Path | None = None) -> Path:
    """The folder holding ``files/pNN/...`` report texts: ``reports_root`` (or its parent, when it
    is the ``files`` folder itself) or, by default, the image root."""
    if reports_root is None:
        return Path(root)
    folder = Path(reports_root).expanduser()
    if not folder.is_dir():
        raise DataError(folder, "reports_root does not exist or is not a folder (the unzipped mimic-cxr-reports)")
    if not (folder / "files").is_dir() and folder.name == "files":
        return folder.parent
    if not (folder / "files").is_dir():
        raise DataError(folder, "reports_root holds no files/ folder (expected files/pNN/pSUBJECT/sSTUDY.txt)")
    return folder


def report_path(root: str | Path, subject_id: str, study_id: str) -> Path:
    """``root`` is the folder holding ``files/`` (``reports_folder``)."""
    return Path(root) / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"


def dicom_views(root: str | Path) -> dict[str, str]:
    """{dicom_id: ViewPosition} from the metadata CSV (upper-cased; blank stays "")."""
    rows = read_table(find_table(root, METADATA), METADATA_COLUMNS, SkipCounter("skip"))
    return {r["dicom_id"].strip(): r["ViewPosition"].strip().upper() for r in rows}


def read_labels(path: Path, counter: SkipCounter) -> dict[str, list[float]]:
    """chexpert CSV -> {study_id: 14 raw labels}. Bad values and duplicate studies go to ``counter``."""
    labels: dict[str, list[float]] = {}
    for row in read_table(path, CHEXPERT_COLUMNS, counter):
        study_id = normalize_id(row["study_id"])
        values = []
        try:
            for name in FINDINGS:
                try:
                    values.append(parse_label(row[name]))
                except ValueError:
                    raise DataError(path, f"line {row['_line']}: {name} = {row[name]!r} is not 1, 0, -1 or blank") from None
        except DataError as err:
            counter(err, kind="bad_label")
            continue
        if study_id in labels:
            counter(DataError(path, f"line {row['_line']}: study {study_id} appears more than once"), kind="duplicate_study")
            continue
        labels[study_id] = values
    return labels


def load_studies(
    root: str | Path,
    splits: Iterable[str] | None = None,
    views: Sequence[str] | None = ("PA", "AP"),
    images: str = "first",
    on_error: str = "raise",
    *,
    counter: SkipCounter | None = None,
    check_images: bool = True,
    reports_root: str | Path | None = None,
    labels: str = "chexpert",
) -> list[Study]:
    """Dataset root -> list of ``Study`` (one per study with at least one image of ``views``).

    ``splits``: names to keep (None: all). ``views``: ViewPosition values to keep, in order of
    preference (None: every view, including blank ones). ``images``: "first" keeps the best
    image of a study (earliest preferred view, then metadata order), "all" keeps every matching
    image. ``check_images``: skip the existence check of each image file (faster on slow disks).
    ``reports_root``: a separate reports tree (see the module docstring). ``labels``: "chexpert"
    (the default) or "negbio", the label file to read.
    Study order: metadata order of each study's first row.
    """
    root = Path(root)
    if images not in ("first", "all"):
        raise ValueError(f"images must be 'first' or 'all', got {images!r}")
    counter = counter or SkipCounter(on_error)
    if labels not in LABEL_TABLES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_TABLES)}, got {labels!r}")
    texts = reports_folder(root, reports_root)
    wanted_splits = None if splits is None else set(splits)
    if wanted_splits is not None and wanted_splits - set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(wanted_splits - set(SPLITS))}; known: {', '.join(SPLITS)}")
    view_rank = None if views is None else {v.upper(): i for i, v in enumerate(views)}

    split_path, split_of = _read_splits(root, counter)
    by_study = _rows_by_study(root, split_path, split_of, view_rank, wanted_splits, counter)
    label_rows = read_labels(find_table(root, LABEL_TABLES[labels]), counter)
    rois = _rois_by_study(root, counter)

    studies = []
    missing_before = counter.counts.get("missing_report", 0)
    for study_id, rows in by_study.items():
        study = _build_study(root, study_id, rows, split_of, view_rank, images, label_rows, rois, counter,
                             check_images, texts)
        if study is not None:
            studies.append(study)
    no_report = counter.counts.get("missing_report", 0) - missing_before
    if no_report:
        log.warning("%d of %d studies have no report in %s (skipped)", no_report, no_report + len(studies),
                    texts / "files")
    unmatched = set(rois) - {s.study_id for s in studies}
    if unmatched:
        # Normal when splits/views are filtered; 'kdistill data check' reports ROIs of unknown studies.
        log.info("%d studies in %s were not loaded; their regions are not attached", len(unmatched), root / ROIS)
    unlabelled = sum(1 for s in studies if all(math.isnan(v) for v in s.labels))
    if unlabelled:
        log.info("%d of %d studies have no row in the %s CSV (labels all blank)", unlabelled, len(studies), labels)
    if counter.counts:
        log.warning("%s: skipped %s", root, counter.summary())
    return studies


def _read_splits(root: Path, counter: SkipCounter) -> tuple[Path, dict[str, str]]:
    """The split CSV -> (its path, {dicom_id: split}); unknown split names are counted and left out."""
    split_path = find_table(root, SPLIT)
    split_of: dict[str, str] = {}
    for row in read_table(split_path, SPLIT_COLUMNS, counter):
        split = row["split"].strip()
        if split not in SPLITS:
            counter(DataError(split_path, f"line {row['_line']}: unknown split {split!r}"), kind="bad_split")
            continue
        split_of[row["dicom_id"].strip()] = split
    return split_path, split_of


def _rows_by_study(root: Path, split_path: Path, split_of: dict[str, str], view_rank, wanted_splits,
                   counter: SkipCounter) -> dict[str, list[dict[str, str]]]:
    """The metadata rows of the wanted views and splits, grouped by study in metadata order;
    duplicate dicom_ids and images without a split are counted and left out."""
    meta_path = find_table(root, METADATA)
    by_study: dict[str, list[dict[str, str]]] = collections.OrderedDict()
    seen_dicoms: set[str] = set()
    for row in read_table(meta_path, METADATA_COLUMNS, counter):
        dicom_id = row["dicom_id"].strip()
        if dicom_id in seen_dicoms:
            counter(DataError(meta_path, f"line {row['_line']}: dicom_id {dicom_id} appears more than once"),
                    kind="duplicate_dicom")
            continue
        seen_dicoms.add(dicom_id)
        view = row["ViewPosition"].strip().upper()
        if view_rank is not None and view not in view_rank:
            continue
        if dicom_id not in split_of:
            counter(DataError(split_path, f"dicom_id {dicom_id} (metadata line {row['_line']}) has no split"),
                    kind="no_split")
            continue
        if wanted_splits is not None and split_of[dicom_id] not in wanted_splits:
            continue
        by_study.setdefault(normalize_id(row["study_id"]), []).append(row)
    return by_study


def _build_study(root, study_id, rows, split_of, view_rank, images, labels, rois, counter, check_images, texts):
    subject_id = normalize_id(rows[0]["subject_id"])
    if view_rank is not None:
        rows = sorted(rows, key=lambda r: view_rank[r["ViewPosition"].strip().upper()])  # stable: metadata order
    folder = study_dir(root, subject_id, study_id)
    kept = []
    for row in rows:
        path = folder / f"{row['dicom_id'].strip()}.jpg"
        if check_images and not path.is_file():
            counter(DataError(path, f"image of study {study_id} not found"), kind="missing_image")
            continue
        kept.append(row)
        if images == "first":
            break
    if not kept:
        counter(DataError(folder, f"study {study_id}: no readable image left"), kind="study_without_images")
        return None
    splits = {split_of[r["dicom_id"].strip()] for r in kept}
    if len(splits) > 1:
        counter(DataError(folder, f"study {study_id}: images in several splits {sorted(splits)}"), kind="mixed_split")
        return None
    text_path = report_path(texts, subject_id, study_id)
    try:
        text = text_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        hint = "" if texts != Path(root) else (" (MIMIC-CXR-JPG ships no reports: point data.reports_root at the "
                                               "unzipped mimic-cxr-reports, or skip with on_error=skip)")
        counter(DataError(text_path, f"report of study {study_id} not found{hint}"), kind="missing_report")
        return None
    findings, impression = extract_sections(text)
    dicom_ids = [r["dicom_id"].strip() for r in kept]
    study_rois = [r for r in rois.get(study_id, []) if not r.dicom_id or r.dicom_id in dicom_ids]
    return Study(
        study_id=study_id,
        subject_id=subject_id,
        split=splits.pop(),
        image_paths=[str(folder / f"{d}.jpg") for d in dicom_ids],
        view=kept[0]["ViewPosition"].strip().upper(),
        findings=findings,
        impression=impression,
        labels=list(labels.get(study_id, [math.nan] * len(FINDINGS))),
        rois=study_rois,
        dicom_ids=dicom_ids,
    )


def _rois_by_study(root: Path, counter: SkipCounter) -> dict[str, list[Roi]]:
    path = root / ROIS
    if not path.is_file():
        return {}
    from kdistill.data.rois import load_rois

    return load_rois(path, counter=counter)


register(Source(
    name="mimic",
    loader=load_studies,
    index_files=(f"{METADATA}.csv.gz", f"{METADATA}.csv"),
    has_reports=True,
    image_views=dicom_views,
    description="MIMIC-CXR-JPG v2 layout (also the phantom's)",
))
