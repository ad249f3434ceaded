"""NIH ChestX-ray14 loader (``data.source: nih``): the published index and box files -> ``Study`` rows.

Layout as distributed (any of the image folder forms)::

    ROOT/Data_Entry_2017_v2020.csv[.gz]   (or Data_Entry_2017.csv): Image Index, Finding Labels
                                          ("Effusion|Infiltration"), Follow-up #, Patient ID,
                                          Patient Age, Patient Gender, View Position, ...
    ROOT/images_001/images/*.png ...      the 12 archives unpacked, or ROOT/images/*.png, or flat
    ROOT/BBox_List_2017.csv[.gz]          optional expert boxes: Image Index, Finding Label,
                                          Bbox [x,y,w,h] (pixels of the 1024x1024 image)
    ROOT/train_val_list.txt, test_list.txt  optional official split (one image name per line)
    ROOT/rois.jsonl                       optional further expert regions (kdistill.data.rois, e.g.
                                          ChestX-Det via ``kdistill data import-rois --id-map``):
                                          study_id = the image name without extension

A derived sample with ``labels.csv`` (``image`` path, ``nih_labels``, ``patient_id``, ``age``,
``sex``, ``view``, ``follow_up``) and ``boxes.csv`` (``image``, ``source``, ``label``,
``x1..y2`` in the stored image's pixels), as in ``shared/realdata/nih_64``, loads the same way.

One image is one study (NIH groups no studies): study id = image stem, subject = patient id.
NIH has no reports: findings and impression are empty, so only the stages that need no text run.

Labels: NIH's 14 labels mapped to the 14 CheXpert findings (NIH's own kept in ``Study.meta``):

=====================  ===========================================================
CheXpert finding       NIH label(s)
=====================  ===========================================================
No Finding             No Finding
Atelectasis            Atelectasis
Cardiomegaly           Cardiomegaly
Consolidation          Consolidation
Edema                  Edema
Pleural Effusion       Effusion
Pneumonia              Pneumonia
Pneumothorax           Pneumothorax
Lung Lesion            Mass, Nodule
Pleural Other          Pleural_Thickening
Lung Opacity           any opacity: Infiltration, Mass, Nodule, Atelectasis, Consolidation,
                       Edema, Pneumonia (CheXpert's parent rule)
Enlarged Card., Fracture, Support Devices   blank: NIH has no such label
=====================  ===========================================================

Every NIH label absent from an image is a negative (0) for the findings it maps to (NIH's labels
are exhaustive over its 14); Emphysema, Fibrosis and Hernia map to nothing. Labels are text-mined
from reports (noisy); the boxes are radiologists'.

Split: the official lists when present (``test_list.txt`` -> test, ``train_val_list.txt`` split
patient-wise into train / validate), else a seeded patient-wise split of every image
(``split_fractions``, ``split_seed``): no patient is in two splits.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from kdistill.data.mimic import normalize_id, read_table
from kdistill.data.rois import CHESTX_DET_MAP
from kdistill.data.sources import Source, register
from kdistill.data.study import Roi, Study
from kdistill.errors import DataError, SkipCounter
from kdistill.labels import FINDING_INDEX, FINDINGS

log = logging.getLogger(__name__)

INDEX_FILES = ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv.gz",
               "Data_Entry_2017.csv", "labels.csv")
BOX_FILES = ("BBox_List_2017.csv.gz", "BBox_List_2017.csv", "boxes.csv")
NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
              "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
              "No Finding")
TO_CHEXPERT = {
    "No Finding": ("No Finding",),
    "Atelectasis": ("Atelectasis", "Lung Opacity"),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation", "Lung Opacity"),
    "Edema": ("Edema", "Lung Opacity"),
    "Effusion": ("Pleural Effusion",),
    "Pneumonia": ("Pneumonia", "Lung Opacity"),
    "Pneumothorax": ("Pneumothorax",),
    "Mass": ("Lung Lesion", "Lung Opacity"),
    "Nodule": ("Lung Lesion", "Lung Opacity"),
    "Infiltration": ("Lung Opacity",),
    "Pleural_Thickening": ("Pleural Other",),
    "Emphysema": (), "Fibrosis": (), "Hernia": (),
}
NO_NIH_SOURCE = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")
# BBox_List_2017's labels (and ChestX-Det's, in the derived sample's boxes.csv) -> the finding
# whose region the box is.
BOX_LABELS = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "effusion": "Pleural Effusion",
              "infiltrate": "Lung Opacity", "infiltration": "Lung Opacity", "mass": "Lung Lesion",
              "nodule": "Lung Lesion", "pneumonia": "Pneumonia", "pneumothorax": "Pneumothorax",
              **CHESTX_DET_MAP}
SPLITS = ("train", "validate", "test")
_OFFICIAL = {"Image Index": "image", "Finding Labels": "nih_labels", "Patient ID": "patient_id",
             "Patient Age": "age", "Patient Gender": "sex", "View Position": "view", "Follow-up #": "follow_up"}


def chexpert_labels(nih_labels: Sequence[str]) -> list[float]:
    """NIH labels of one image -> 14 CheXpert labels (the module docstring's table)."""
    unknown = [name for name in nih_labels if name not in TO_CHEXPERT]
    if unknown:
        raise ValueError(f"unknown NIH label(s) {unknown}; known: {', '.join(NIH_LABELS)}")
    out = [0.0] * len(FINDINGS)
    for name in NO_NIH_SOURCE:
        out[FINDING_INDEX[name]] = math.nan
    for name in nih_labels:
        for finding in TO_CHEXPERT[name]:
            out[FINDING_INDEX[finding]] = 1.0
    return out


def load_nih(
    root: str | Path,
    splits: Iterable[str] | None = None,
    views: Sequence[str] | None = ("PA", "AP"),
    images: str = "first",
    on_error: str = "raise",
    *,
    counter: SkipCounter | None = None,
    check_images: bool = True,
    split_seed: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> list[Study]:
    """NIH root -> list of ``Study`` (one per image); arguments as ``kdistill.data.mimic.load_studies``
    (``images`` is accepted for the common signature: an NIH study has one image)."""
    root = Path(root)
    counter = counter or SkipCounter(on_error)
    wanted = set(SPLITS if splits is None else splits)
    if wanted - set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(wanted - set(SPLITS))}; known: {', '.join(SPLITS)}")
    index = _find(root, INDEX_FILES)
    if index is None:
        raise DataError(root, f"not an NIH ChestX-ray14 root: none of {', '.join(INDEX_FILES)} found")
    rows = _index_rows(index, counter)
    view_rank = None if views is None else {v.upper(): i for i, v in enumerate(views)}
    split_of = _splits(root, rows, split_seed, split_fractions)
    files = _image_files(root) if check_images else {}
    boxes = _boxes(root, counter)
    for name, rois in _roi_file(root, counter).items():
        boxes.setdefault(name, []).extend(rois)
    studies = []
    for row in rows:
        name = os.path.basename(row["image"])
        if view_rank is not None and row["view"].upper() not in view_rank:
            continue
        if split_of[name] not in wanted:
            continue
        study = _study(root, row, name, split_of[name], files, boxes.get(name, []), index, counter, check_images)
        if study is not None:
            studies.append(study)
    return studies


def _find(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _index_rows(path: Path, counter: SkipCounter) -> list[dict[str, str]]:
    """The index CSV as rows with the sample's column names (image, nih_labels, patient_id, ...)."""
    sample = path.name == "labels.csv"
    required = ("image", "nih_labels", "patient_id", "view") if sample else ("Image Index", "Finding Labels",
                                                                            "Patient ID", "View Position")
    rows = read_table(path, required, counter)
    if sample:
        return rows
    return [{**{new: row.get(old, "") for old, new in _OFFICIAL.items()}, "_line": row["_line"]} for row in rows]


def _splits(root: Path, rows: list[dict[str, str]], seed: int, fractions: Sequence[float]) -> dict[str, str]:
    """Image name -> split; patient-wise, from the official lists when present (module docstring)."""
    patient_of = {os.path.basename(r["image"]): normalize_id(r["patient_id"]) for r in rows}
    test_list, train_val = root / "test_list.txt", root / "train_val_list.txt"
    if test_list.is_file() and train_val.is_file():
        test = set(test_list.read_text().split())
        rest = {p for name, p in patient_of.items() if name not in test}
        validate = {p for p in rest if _draw(p, seed) < fractions[1] / max(fractions[0] + fractions[1], 1e-12)}
        return {name: "test" if name in test else ("validate" if p in validate else "train")
                for name, p in patient_of.items()}
    total = sum(fractions)
    cut_train, cut_val = fractions[0] / total, (fractions[0] + fractions[1]) / total
    out = {}
    for name, patient in patient_of.items():
        u = _draw(patient, seed)
        out[name] = "train" if u < cut_train else ("validate" if u < cut_val else "test")
    return out


def _draw(patient: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (patient, seed): the same split on every machine."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _image_files(root: Path) -> dict[str, str]:
    """Image name -> path, over ROOT/images_*/images/, ROOT/images/ and ROOT itself."""
    found: dict[str, str] = {}
    folders = [root, root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.lower().endswith(".png"):
                        found.setdefault(entry.name, entry.path)
    return found


def _boxes(root: Path, counter: SkipCounter) -> dict[str, list[Roi]]:
    path = _find(root, BOX_FILES)
    if path is None:
        return {}
    out: dict[str, list[Roi]] = collections.defaultdict(list)
    if path.name == "boxes.csv":
        rows = read_table(path, ("image", "label", "x1", "y1", "x2", "y2"), counter)
        coords = [(r, r["image"], r["label"], [r["x1"], r["y1"], r["x2"], r["y2"]], False) for r in rows]
    else:
        rows = _bbox_list_rows(path, counter)
        coords = [(r, r["Image Index"], r["Finding Label"], r["_box"], True) for r in rows]
    unmapped: collections.Counter[str] = collections.Counter()
    for row, image, label, values, is_xywh in coords:
        finding = BOX_LABELS.get(label.strip().lower())
        if finding is None:  # a real region of a finding outside the 14 (Fibrosis, Calcification, ...)
            unmapped[label.strip()] += 1
            continue
        try:
            x, y, a, b = (float(v) for v in values)
        except ValueError:
            counter(DataError(path, f"line {row['_line']}: box {values} is not 4 numbers"), kind="bad_box")
            continue
        box = (x, y, x + a, y + b) if is_xywh else (x, y, a, b)
        if not all(math.isfinite(v) for v in box) or not (box[0] < box[2] and box[1] < box[3]):
            counter(DataError(path, f"line {row['_line']}: empty or inverted box {box}"), kind="bad_box")
            continue
        name = os.path.basename(image)
        out[name].append(Roi(finding=finding, dicom_id=os.path.splitext(name)[0], box=box))
    if unmapped:
        log.info("%s: %d boxes of findings outside the 14 left out: %s", path, sum(unmapped.values()), dict(unmapped))
    return dict(out)


def _roi_file(root: Path, counter: SkipCounter) -> dict[str, list[Roi]]:
    """ROOT/rois.jsonl -> {image name (.png): [Roi]}; a study id is the image's stem."""
    from kdistill.data.rois import load_rois

    path = root / "rois.jsonl"
    if not path.is_file():
        return {}
    return {f"{study_id}.png": rois for study_id, rois in load_rois(path, counter=counter).items()}


def _bbox_list_rows(path: Path, counter: SkipCounter) -> list[dict[str, Any]]:
    """BBox_List_2017 rows. Its header names one column for the box (``Bbox [x,y,w,h]``) and leaves
    the next three blank, so the four numbers are read by position."""
    import csv
    import gzip
    import io

    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    try:
        reader = csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text: {err}") from None
    header = next(reader, None)
    if not header or [h.strip() for h in header[:2]] != ["Image Index", "Finding Label"]:
        raise DataError(path, f"expected a header starting 'Image Index,Finding Label,Bbox [x,y,w,h]', got {header}")
    out = []
    for fields in reader:
        if not fields:
            continue
        if len(fields) < 6:
            counter(DataError(path, f"line {reader.line_num}: expected 6 fields, got {len(fields)}"), kind="malformed_row")
            continue
        out.append({"Image Index": fields[0], "Finding Label": fields[1], "_box": fields[2:6],
                    "_line": str(reader.line_num)})
    return out


def _study(root: Path, row: dict[str, str], name: str, split: str, files: dict[str, str], rois: list[Roi],
           index: Path, counter: SkipCounter, check_images: bool) -> Study | None:
    nih = [part.strip() for part in row["nih_labels"].split("|") if part.strip()]
    try:
        labels = chexpert_labels(nih)
    except ValueError as err:
        counter(DataError(index, f"line {row['_line']}: {err}"), kind="bad_label")
        return None
    path = files.get(name) or os.path.join(root, row["image"] if "/" in row["image"] else os.path.join("images", name))
    if check_images and not os.path.isfile(path):
        counter(DataError(path, f"image {name} (index line {row['_line']}) not found"), kind="missing_image")
        return None
    stem = os.path.splitext(name)[0]
    meta = {"nih_labels": nih, "age": _int(row.get("age")), "sex": row.get("sex", "").strip(),
            "follow_up": _int(row.get("follow_up"))}
    return Study(study_id=stem, subject_id=normalize_id(row["patient_id"]), split=split, image_paths=[path],
                 view=row["view"].strip().upper(), labels=labels, rois=rois, dicom_ids=[stem], meta=meta)


def _int(value: str | None) -> int | None:
    """'57', '57.0' or the 2017 file's '057Y' -> 57; blank or unreadable -> None."""
    text = (value or "").strip().rstrip("YyMmDd")
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


register(Source(
    name="nih",
    loader=load_nih,
    index_files=INDEX_FILES,
    has_reports=False,
    description="NIH ChestX-ray14 (Data_Entry_2017*.csv, image folders as distributed, BBox_List_2017.csv)",
))
