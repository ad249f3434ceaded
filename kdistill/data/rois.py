"""Expert regions: read ``rois.jsonl``, and convert VinDr-CXR / ChestX-Det annotations into it.

``rois.jsonl`` holds one JSON object per line::

    {"study_id": "50414267", "dicom_id": "02aa804e-...", "finding": "Cardiomegaly",
     "box": [x0, y0, x1, y1] | null, "mask": "masks/....png" | null}

Boxes are in pixels of the stored image; masks are binary PNGs of the stored image's size,
their paths relative to the folder holding ``rois.jsonl`` (the dataset root).

Class mapping to the 14 CheXpert findings (``kdistill.labels.FINDINGS``). Classes without a
CheXpert counterpart are *not* imported; they are counted per class and reported by
``kdistill data import-rois`` (and in the returned summary), never dropped silently.

| VinDr-CXR class | finding |
| --- | --- |
| Aortic enlargement | Enlarged Cardiomediastinum |
| Atelectasis | Atelectasis |
| Cardiomegaly | Cardiomegaly |
| Consolidation | Consolidation |
| Edema | Edema |
| Clavicle fracture, Rib fracture | Fracture |
| Nodule/Mass, Lung cavity, Lung cyst | Lung Lesion |
| Lung Opacity, Infiltration, ILD | Lung Opacity |
| Pleural effusion | Pleural Effusion |
| Pleural thickening | Pleural Other |
| Pneumothorax | Pneumothorax |
| Calcification, Emphysema, Enlarged PA, Mediastinal shift, Pulmonary fibrosis, Other lesion | (unmapped) |
| No finding | (not a region: counted as ``no_finding_rows``) |

| ChestX-Det class | finding |
| --- | --- |
| Atelectasis | Atelectasis |
| Cardiomegaly | Cardiomegaly |
| Consolidation | Consolidation |
| Effusion | Pleural Effusion |
| Fracture | Fracture |
| Mass, Nodule, Diffuse Nodule | Lung Lesion |
| Pleural Thickening | Pleural Other |
| Pneumothorax | Pneumothorax |
| Calcification, Emphysema, Fibrosis | (unmapped) |

VinDr boxes are in the pixel grid of the original DICOM; keep the stored images at that size
(or rescale the boxes) so they stay in "pixels of the stored image".

Ids: both datasets have one image per study, so ``study_id`` and ``dicom_id`` are the image
id (VinDr ``image_id``; ChestX-Det ``file_name`` without extension).
ChestX-Det polygons are rasterised to mask PNGs under ``masks/`` next to the output file; the
JSON carries no image size, so ``--image-size`` gives it (ChestX-Det images are 1024x1024).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from kdistill.data.study import Roi
from kdistill.errors import DataError, SkipCounter
from kdistill.io import atomic_path, write_text_atomic
from kdistill.labels import FINDING_INDEX

VINDR_MAP = {
    "aortic enlargement": "Enlarged Cardiomediastinum",
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "clavicle fracture": "Fracture",
    "rib fracture": "Fracture",
    "nodule/mass": "Lung Lesion",
    "lung cavity": "Lung Lesion",
    "lung cyst": "Lung Lesion",
    "lung opacity": "Lung Opacity",
    "infiltration": "Lung Opacity",
    "ild": "Lung Opacity",
    "pleural effusion": "Pleural Effusion",
    "pleural thickening": "Pleural Other",
    "pneumothorax": "Pneumothorax",
}
CHESTX_DET_MAP = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "effusion": "Pleural Effusion",
    "fracture": "Fracture",
    "mass": "Lung Lesion",
    "nodule": "Lung Lesion",
    "diffuse nodule": "Lung Lesion",
    "pleural thickening": "Pleural Other",
    "pneumothorax": "Pneumothorax",
}
VINDR_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")


def roi_to_json(study_id: str, roi: Roi) -> dict[str, Any]:
    """One ``rois.jsonl`` line (the inverse of what ``load_rois`` reads)."""
    return {"study_id": study_id, "dicom_id": roi.dicom_id, "finding": roi.finding,
            "box": list(roi.box) if roi.box is not None else None, "mask": roi.mask}


def load_rois(path: str | Path, counter: SkipCounter | None = None) -> dict[str, list[Roi]]:
    """rois.jsonl -> {study_id: [Roi, ...]}. A bad line (not JSON, unknown finding, bad box,
    neither box nor mask) is a ``DataError`` naming the line, or counted as ``bad_roi``."""
    path = Path(path)
    counter = counter or SkipCounter("raise")
    out: dict[str, list[Roi]] = collections.defaultdict(list)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            study_id, roi = parse_roi_line(line, path, number)
        except DataError as err:
            counter(err, kind="bad_roi")
            continue
        out[study_id].append(roi)
    return dict(out)


def parse_roi_line(line: str, path: Path, number: int) -> tuple[str, Roi]:
    """One rois.jsonl line -> (study_id, Roi); ``DataError`` naming file and line otherwise."""
    where = f"line {number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(path, f"{where}: not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise DataError(path, f"{where}: expected a JSON object")
    study_id = str(obj.get("study_id") or "").strip()
    if not study_id:
        raise DataError(path, f"{where}: missing study_id")
    finding = obj.get("finding")
    if finding not in FINDING_INDEX:
        raise DataError(path, f"{where}: unknown finding {finding!r}")
    box, mask = obj.get("box"), obj.get("mask")
    if box is None and not mask:
        raise DataError(path, f"{where}: neither box nor mask")
    if box is not None:
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise DataError(path, f"{where}: box must be 4 finite numbers [x0, y0, x1, y1], got {box!r}")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise DataError(path, f"{where}: box {box} is empty or inverted (need x0 < x1, y0 < y1)")
        box = tuple(float(v) for v in box)
    return study_id, Roi(finding=finding, dicom_id=str(obj.get("dicom_id") or ""), box=box, mask=mask or None)


def read_id_map(path: str | Path) -> dict[str, str]:
    """A two-column CSV (header, then: the annotation file's image id, the dataset's image id) ->
    {annotation id: dataset id}. Ids are taken without a file extension (``36199.png`` -> ``36199``)."""
    from kdistill.data.mimic import read_table

    path = Path(path)
    rows = read_table(path, ())
    if not rows:
        raise DataError(path, "empty id map")
    first, second = [k for k in rows[0] if k != "_line"][:2]
    return {Path(r[first].strip()).stem: Path(r[second].strip()).stem for r in rows if r[first].strip() and r[second].strip()}


def _renamed(image_id: str, id_map: dict[str, str] | None, missing: collections.Counter) -> str | None:
    if id_map is None:
        return image_id
    if image_id not in id_map:
        missing["ids_not_in_map"] += 1
        return None
    return id_map[image_id]


def import_vindr(csv_path: str | Path, out: str | Path, id_map: dict[str, str] | None = None) -> dict[str, Any]:
    """VinDr-CXR annotations CSV -> rois.jsonl. Returns the summary (written, unmapped per class, ...).
    ``id_map``: annotation image id -> the dataset's image id (regions of ids not in it are left
    out and counted as ``regions_not_in_id_map``)."""
    csv_path = Path(csv_path)
    missing: collections.Counter[str] = collections.Counter()
    from kdistill.data.mimic import read_table

    rows = read_table(csv_path, VINDR_COLUMNS)
    records: list[dict[str, Any]] = []
    unmapped: collections.Counter[str] = collections.Counter()
    no_finding = 0
    for row in rows:
        name = row["class_name"].strip()
        if name.lower() == "no finding":
            no_finding += 1
            continue
        finding = VINDR_MAP.get(name.lower())
        if finding is None:
            unmapped[name] += 1
            continue
        try:
            box = [float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        except ValueError:
            raise DataError(csv_path, f"line {row['_line']}: box coordinates not numbers for {name!r}") from None
        if not all(math.isfinite(v) for v in box) or not (box[0] < box[2] and box[1] < box[3]):
            raise DataError(csv_path, f"line {row['_line']}: bad box {box} for {name!r}")
        image_id = _renamed(row["image_id"].strip(), id_map, missing)
        if image_id is not None:
            records.append(roi_to_json(image_id, Roi(finding, image_id, tuple(box))))
    _write_jsonl(records, Path(out))
    extra = {} if id_map is None else {"regions_not_in_id_map": missing["ids_not_in_map"]}
    return {"format": "vindr", "rows": len(rows), "written": len(records), "no_finding_rows": no_finding,
            **extra, "unmapped": dict(unmapped)}


def import_chestx_det(json_path: str | Path, out: str | Path, image_size: tuple[int, int] = (1024, 1024),
                      masks: bool = True, id_map: dict[str, str] | None = None) -> dict[str, Any]:
    """ChestX-Det JSON -> rois.jsonl plus mask PNGs (polygons) under ``masks/`` beside ``out``.

    ``image_size`` is (width, height) of the images the coordinates refer to; ``masks=False``
    keeps the boxes only (no PNG per region: the polygons are not rasterised); ``id_map`` as for
    :func:`import_vindr` (ChestX-Det's numbered images are NIH ChestX-ray14 frames: map them to the
    NIH image names to use the regions with ``data.source: nih``)."""
    missing: collections.Counter[str] = collections.Counter()
    json_path, out = Path(json_path), Path(out)
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(json_path, "file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(json_path, f"not JSON: {err}") from None
    if not isinstance(entries, list):
        raise DataError(json_path, "expected a JSON list of {file_name, syms, boxes, polygons}")
    mask_dir = out.parent / "masks"
    records: list[dict[str, Any]] = []
    unmapped: collections.Counter[str] = collections.Counter()
    n_masks = 0
    for n, entry in enumerate(entries):
        where = f"entry {n}"
        if not isinstance(entry, dict) or "file_name" not in entry:
            raise DataError(json_path, f"{where}: expected an object with file_name")
        syms = entry.get("syms") or []
        boxes = entry.get("boxes") or []
        polygons = entry.get("polygons") or []
        if len(boxes) != len(syms) or (polygons and len(polygons) != len(syms)):
            raise DataError(json_path, f"{where} ({entry['file_name']}): {len(syms)} syms, {len(boxes)} boxes, "
                            f"{len(polygons)} polygons - counts must match")
        image_id = Path(str(entry["file_name"])).stem
        if id_map is not None:
            if image_id not in id_map:
                missing["ids_not_in_map"] += sum(str(sym).strip().lower() in CHESTX_DET_MAP for sym in syms)
                continue
            image_id = id_map[image_id]
        for k, sym in enumerate(syms):
            finding = CHESTX_DET_MAP.get(str(sym).strip().lower())
            if finding is None:
                unmapped[str(sym)] += 1
                continue
            box = [float(v) for v in boxes[k]]
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                raise DataError(json_path, f"{where} ({entry['file_name']}): bad box {boxes[k]} for {sym!r}")
            mask_rel = None
            if masks and polygons and polygons[k]:
                mask_file = mask_dir / f"{image_id}_{k}_{finding.replace(' ', '_')}.png"
                _write_polygon_mask(polygons[k], image_size, mask_file, json_path, where)
                mask_rel = os.path.relpath(mask_file, out.parent)
                n_masks += 1
            records.append(roi_to_json(image_id, Roi(finding, image_id, tuple(box), mask_rel)))
    _write_jsonl(records, out)
    extra = {} if id_map is None else {"regions_not_in_id_map": missing["ids_not_in_map"]}
    return {"format": "chestx-det", "images": len(entries), "written": len(records), "masks": n_masks,
            **extra, "unmapped": dict(unmapped)}


def rasterize_polygon(points: Sequence[Sequence[float]], size: tuple[int, int]):
    """Polygon [[x, y], ...] -> uint8 mask (height, width) with 255 inside (edges included)."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = size
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in points], fill=255, outline=255)
    return np.asarray(img)


def _write_polygon_mask(points, size, mask_file: Path, source: Path, where: str) -> None:
    from PIL import Image

    if not isinstance(points, list) or len(points) < 3 or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise DataError(source, f"{where}: polygon needs at least 3 [x, y] points")
    mask_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(mask_file) as tmp:
        Image.fromarray(rasterize_polygon(points, size)).save(tmp)


def _write_jsonl(records: list[dict[str, Any]], out: Path) -> None:
    write_text_atomic(out, "".join(json.dumps(rec, allow_nan=False) + "\n" for rec in records))


def main(argv: list[str] | None = None, prog: str = "kdistill data import-rois") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Convert VinDr-CXR (CSV) or ChestX-Det (JSON) "
                                     "expert annotations to rois.jsonl, mapping classes to the 14 CheXpert findings.")
    parser.add_argument("--format", required=True, choices=("vindr", "chestx-det"), help="annotation format")
    parser.add_argument("input", help="VinDr annotations CSV or ChestX-Det JSON")
    parser.add_argument("--out", required=True, help="output rois.jsonl (masks go to masks/ beside it)")
    parser.add_argument("--id-map", help="CSV of two columns: the annotation's image id, the dataset's image id "
                        "(e.g. ChestX-Det numbers -> NIH image names); regions of other ids are left out, counted")
    parser.add_argument("--boxes-only", action="store_true",
                        help="ChestX-Det: keep the boxes, do not rasterise the polygons into mask PNGs")
    parser.add_argument("--image-size", default="1024x1024",
                        help="WIDTHxHEIGHT of the images, for rasterising ChestX-Det polygons (default 1024x1024)")
    args = parser.parse_args(argv)
    id_map = read_id_map(args.id_map) if args.id_map else None
    if args.format == "vindr":
        summary = import_vindr(args.input, args.out, id_map=id_map)
    else:
        try:
            width, height = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            parser.error(f"--image-size must be WIDTHxHEIGHT, got {args.image_size!r}")
        summary = import_chestx_det(args.input, args.out, (width, height), masks=not args.boxes_only, id_map=id_map)
    print(f"wrote {summary['written']} regions to {args.out}")
    for key, value in summary.items():
        if key not in ("written", "unmapped"):
            print(f"  {key}: {value}")
    if summary["unmapped"]:
        print("  not imported (no CheXpert finding for the class):")
        for name, count in sorted(summary["unmapped"].items()):
            print(f"    {name}: {count}")
    return 0
