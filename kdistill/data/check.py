"""``kdistill data check ROOT``: everything wrong with a MIMIC-CXR-JPG-layout dataset, in one pass.

Errors (exit status 1): missing or unreadable CSVs (missing file, bad gzip, missing columns,
rows with the wrong number of fields), labels outside {1, 0, -1, blank}, subject, study and
dicom ids that are not plain identifiers (they become file and folder names: ``..``, slashes,
control characters are refused), duplicate dicom_ids
in the metadata, duplicate study rows in the chexpert CSV, images without a split, unknown
split names, missing images, corrupt or truncated images, missing reports, bad rois.jsonl
lines (not JSON, unknown finding, bad box), ROIs for unknown studies or images, ROIs outside
their image (box beyond Columns/Rows), missing ROI masks.

Warnings (exit status 0 when alone): studies absent from the chexpert CSV (labels all blank),
chexpert/split rows for studies/images absent from the metadata, reports with no usable
FINDINGS/IMPRESSION section, image sizes that disagree with Rows/Columns.

Images are checked cheaply by default (header parses, JPEG ends with its EOI marker, PNG with
IEND: catches truncation and garbage); ``--decode`` decodes every pixel (slow on real MIMIC).
Counts: studies and images per split, images per view, label prevalence per finding.

Other sources (``--source chexpert | nih``, ``kdistill.data.sources``) are checked through their
loader (``check_source``): every problem it counts (malformed rows, bad labels, images named in
the CSV but missing on disk, ...) becomes an issue, each loaded image is checked as above, and
the same counts are printed. The report (its issues, severities and text) is
``kdistill.data.check_report``'s, re-exported here.
"""
from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path
from typing import Any

from kdistill.data.check_report import (ERROR, PLAIN_ID, WARNING, CheckReport, Issue, format_report,  # noqa: F401
                                        is_plain_id)
from kdistill.data.images import image_size, read_image
from kdistill.data.mimic import (CHEXPERT, METADATA, METADATA_COLUMNS, ROIS, SPLIT, SPLIT_COLUMNS, SPLITS,
                                 find_table, normalize_id, read_labels, read_table, report_path, study_dir)
from kdistill.data.rois import parse_roi_line
from kdistill.data.sections import extract_sections
from kdistill.errors import DataError
from kdistill.io import write_json
from kdistill.labels import FINDINGS

def check_dataset(root: str | Path, decode: bool = False) -> CheckReport:
    """Check a dataset root; never raises on bad data (every problem becomes an Issue)."""
    root = Path(root)
    report = CheckReport(root=str(root))
    meta_rows = _table(report, root, METADATA, METADATA_COLUMNS)
    split_rows = _table(report, root, SPLIT, SPLIT_COLUMNS)
    labels = _labels(report, root)

    # metadata: one row per image
    images: dict[str, dict[str, str]] = {}
    for row in meta_rows or []:
        if not _plain_ids(report, row, ("subject_id", "study_id", "dicom_id")):
            continue
        dicom_id = row["dicom_id"].strip()
        if dicom_id in images:
            report.add("duplicate_dicom", row["_path"], f"line {row['_line']}: dicom_id {dicom_id} appears more than once")
            continue
        images[dicom_id] = row
    split_of: dict[str, str] = {}
    for row in split_rows or []:
        dicom_id, split = row["dicom_id"].strip(), row["split"].strip()
        if split not in SPLITS:
            report.add("bad_split", row["_path"], f"line {row['_line']}: unknown split {split!r} (known: {', '.join(SPLITS)})")
            continue
        split_of[dicom_id] = split
        if meta_rows is not None and dicom_id not in images:
            report.add("split_without_metadata", row["_path"], f"line {row['_line']}: dicom_id {dicom_id} not in the metadata")

    studies: dict[str, dict[str, Any]] = collections.OrderedDict()
    views = collections.Counter()
    for dicom_id, row in images.items():
        study_id, subject_id = normalize_id(row["study_id"]), normalize_id(row["subject_id"])
        study = studies.setdefault(study_id, {"subject_id": subject_id, "dicoms": [], "splits": set()})
        study["dicoms"].append(dicom_id)
        views[row["ViewPosition"].strip().upper() or "(blank)"] += 1
        if split_rows is not None:
            if dicom_id in split_of:
                study["splits"].add(split_of[dicom_id])
            else:
                report.add("no_split", row["_path"], f"line {row['_line']}: dicom_id {dicom_id} has no row in the split CSV")
        path = study_dir(root, subject_id, study_id) / f"{dicom_id}.jpg"
        _check_image(report, path, row, decode)

    for study_id, study in studies.items():
        text_path = report_path(root, study["subject_id"], study_id)
        if not text_path.is_file():
            report.add("missing_report", text_path, f"report of study {study_id} not found")
        else:
            findings, impression = extract_sections(text_path.read_text(encoding="utf-8", errors="replace"))
            if not findings and not impression:
                report.add("no_usable_section", text_path, "no FINDINGS or IMPRESSION text (even by fallback)")
        if labels is not None and study_id not in labels:
            report.add("unlabelled_study", labels.get("_path", ""), f"study {study_id} has no row (labels all blank)")
    if labels is not None and meta_rows is not None:
        for study_id in labels:
            if study_id != "_path" and study_id not in studies:
                report.add("labels_without_images", labels["_path"], f"study {study_id} is not in the metadata")

    if meta_rows is not None:  # without the metadata every ROI would look like one for an unknown study
        _check_rois(report, root, studies, images)
    report.counts = _counts(studies, images, split_of, labels, views)
    return report


def _plain_ids(report: CheckReport, row: dict[str, str], columns) -> bool:
    """Report every id of ``row`` that is not a plain identifier; True when all are plain."""
    ok = True
    for column in columns:
        value = normalize_id(row[column])
        if not is_plain_id(value):
            report.add("bad_id", row["_path"], f"line {row['_line']}: {column} {value!r} is not a plain identifier "
                                               "(letters, digits, '.', '_', '-'; no '..', slashes or control "
                                               "characters): ids become file and folder names")
            ok = False
    return ok


def _table(report: CheckReport, root: Path, stem: str, columns) -> list[dict[str, str]] | None:
    try:
        path = find_table(root, stem)
    except DataError as err:
        report.add("missing_file", err.path, err.problem)
        return None
    try:
        rows = read_table(path, columns, report)
    except DataError as err:
        report.add("bad_csv", err.path, err.problem)
        return None
    for row in rows:
        row["_path"] = str(path)
    return rows


def _labels(report: CheckReport, root: Path) -> dict[str, Any] | None:
    try:
        path = find_table(root, CHEXPERT)
    except DataError as err:
        report.add("missing_file", err.path, err.problem)
        return None
    try:
        labels: dict[str, Any] = read_labels(path, report)
    except DataError as err:
        report.add("bad_csv", err.path, err.problem)
        return None
    labels["_path"] = str(path)
    return labels


def _check_image(report: CheckReport, path: Path, row: dict[str, str], decode: bool) -> None:
    if not path.is_file():
        report.add("missing_image", path, f"image listed at {row['_path']} line {row['_line']} not found")
        return
    try:
        if decode:
            height, width = read_image(path).shape
        else:
            height, width = image_size(path)
            problem = _trailer_problem(path)
            if problem:
                report.add("corrupt_image", path, problem)
                return
    except DataError as err:
        report.add("corrupt_image", path, err.problem)
        return
    expected = (_int(row.get("Rows")), _int(row.get("Columns")))
    if None not in expected and expected != (height, width):
        report.add("size_mismatch", path, f"image is {width}x{height}, metadata says Columns={expected[1]} Rows={expected[0]}")


def _trailer_problem(path: Path) -> str | None:
    """Cheap truncation test: JPEG must end with EOI (FFD9), PNG with the IEND chunk."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 64))
        tail = fh.read().rstrip(b"\x00")
    if head[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail[-12:]:
        return "truncated PNG (no IEND chunk)"
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _check_rois(report: CheckReport, root: Path, studies, images) -> None:
    path = root / ROIS
    if not path.is_file():
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            study_id, roi = parse_roi_line(line, path, number)
        except DataError as err:
            report.add("bad_roi", err.path, err.problem)
            continue
        where = f"line {number}"
        if study_id not in studies:
            report.add("roi_unknown_study", path, f"{where}: study {study_id} is not in the metadata")
            continue
        if roi.dicom_id and roi.dicom_id not in studies[study_id]["dicoms"]:
            report.add("roi_unknown_image", path, f"{where}: dicom_id {roi.dicom_id} is not an image of study {study_id}")
            continue
        if roi.mask and not (root / roi.mask).is_file():
            report.add("missing_mask", path, f"{where}: mask {roi.mask} not found")
        dicoms = [roi.dicom_id] if roi.dicom_id else studies[study_id]["dicoms"]
        if roi.box is not None:
            for dicom_id in dicoms:
                rows, cols = _int(images[dicom_id].get("Rows")), _int(images[dicom_id].get("Columns"))
                x0, y0, x1, y1 = roi.box
                if cols is not None and rows is not None and (x0 < 0 or y0 < 0 or x1 > cols or y1 > rows):
                    report.add("roi_outside_image", path, f"{where}: box {list(roi.box)} ({roi.finding}) exceeds image "
                               f"{dicom_id} of {cols}x{rows} (Columns x Rows)")


def _counts(studies, images, split_of, labels, views) -> dict[str, Any]:
    per_split = {s: {"studies": 0, "images": 0} for s in SPLITS}
    for study in studies.values():
        for split in study["splits"]:
            per_split[split]["studies"] += 1
    for dicom_id in images:
        if dicom_id in split_of:
            per_split[split_of[dicom_id]]["images"] += 1
    prevalence = _no_labels()
    labelled = 0
    for study_id, values in (labels or {}).items():
        if study_id == "_path":
            continue
        labelled += 1
        _count_labels(prevalence, values)
    return {"studies": len(studies), "images": len(images), "labelled_studies": labelled, "splits": per_split,
            "views": dict(views), "label_prevalence": prevalence}


def _no_labels() -> dict[str, dict[str, int]]:
    return {f: {"positive": 0, "negative": 0, "uncertain": 0, "blank": 0} for f in FINDINGS}


def _count_labels(prevalence: dict[str, dict[str, int]], values) -> None:
    """Add one study's 14 labels (1, 0, -1, NaN = blank) to the per-finding prevalence counts."""
    for name, value in zip(FINDINGS, values):
        key = ("blank" if math.isnan(value) else "positive" if value == 1 else
               "negative" if value == 0 else "uncertain")
        prevalence[name][key] += 1


def check_source(data, decode: bool = False) -> CheckReport:
    """Check a dataset of any registered source (a ``kdistill.data.sources.DataSource``) through
    its loader; never raises on bad data."""
    report = CheckReport(root=str(data.root))
    try:
        data.check_root()
        studies = data.load_studies(views=None, images="all", on_error="skip", counter=report)
    except DataError as err:
        report.add("missing_file" if "not found" in err.problem or "none of" in err.problem else "bad_csv",
                   err.path, err.problem)
        return report
    per_split: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"studies": 0, "images": 0})
    prevalence = _no_labels()
    views: collections.Counter[str] = collections.Counter()
    images = labelled = 0
    for study in studies:
        if not is_plain_id(study.study_id):
            report.add("bad_id", data.root, f"study id {study.study_id!r} is not a plain identifier")
        per_split[study.split]["studies"] += 1
        per_split[study.split]["images"] += len(study.image_paths)
        images += len(study.image_paths)
        views[study.view or "(blank)"] += 1
        for path in study.image_paths:
            _check_image(report, Path(path), {"_path": data.root, "_line": "?"}, decode)
        if not all(math.isnan(v) for v in study.labels):
            labelled += 1
            _count_labels(prevalence, study.labels)
    report.counts = {"studies": len(studies), "images": images, "labelled_studies": labelled,
                     "splits": dict(per_split), "views": dict(views), "label_prevalence": prevalence}
    return report


def main(argv: list[str] | None = None, prog: str = "kdistill data check") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Check a dataset root (MIMIC-CXR-JPG v2 layout): counts, "
                                     "label prevalence, missing/corrupt files, malformed CSVs, bad ROIs. "
                                     "Exits 1 when there are errors (warnings alone exit 0).")
    parser.add_argument("root", help="dataset root")
    parser.add_argument("--source", default="mimic", help="layout of ROOT: mimic (MIMIC-CXR-JPG and the phantom, the "
                                                          "default), chexpert, nih (kdistill.data.sources)")
    parser.add_argument("--json", dest="json_out", help="also write the full report (every issue) to this JSON file")
    parser.add_argument("--decode", action="store_true", help="decode every image fully (slow) instead of the quick check")
    parser.add_argument("--max-per-kind", type=int, default=10, help="issues listed per kind in the summary (default 10)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise DataError(root, "dataset root is not a folder")
    if args.source == "mimic":
        report = check_dataset(root, decode=args.decode)
    else:
        from kdistill.data.sources import open_source

        try:
            data = open_source(args.source, root)
        except ValueError as err:
            parser.error(str(err))
        report = check_source(data, decode=args.decode)
    print(format_report(report, args.max_per_kind))
    if args.json_out:
        write_json(args.json_out, report.to_dict())
    return 1 if report.errors else 0
