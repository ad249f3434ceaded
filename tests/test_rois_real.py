"""``kdistill data import-rois`` on the real published annotation files in ../shared/realdata
(annotations/: VinDr-CXR ``vinbigdata-train.csv.gz``, ChestX-Det ``ChestX_Det_{train,test}.json``):
regions per finding, the classes left unmapped named with their counts, and the expected totals
counted independently from the raw files."""
from __future__ import annotations

import collections
import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures.realdata import find_realdata
from kdistill.data.rois import CHESTX_DET_MAP, VINDR_MAP, load_rois, main


REAL = find_realdata("annotations")
pytestmark = pytest.mark.skipif(REAL is None, reason="../shared/realdata (the real annotation files) not found")


def _counts(path: Path) -> collections.Counter:
    return collections.Counter(json.loads(line)["finding"] for line in path.read_text().splitlines())


def test_vindr_real_annotations(tmp_path, capsys):
    src = REAL / "annotations" / "vindr" / "vinbigdata-train.csv.gz"
    out = tmp_path / "rois.jsonl"
    assert main(["--format", "vindr", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert _counts(out) == {"Enlarged Cardiomediastinum": 7162, "Cardiomegaly": 5427, "Pleural Other": 4842,
                            "Lung Opacity": 4730, "Lung Lesion": 2580, "Pleural Effusion": 2476,
                            "Consolidation": 556, "Atelectasis": 279, "Pneumothorax": 226}
    assert "wrote 28278 regions" in printed and "rows: 67914" in printed and "no_finding_rows: 31818" in printed
    for name, n in (("Pulmonary fibrosis", 4655), ("Other lesion", 2203), ("Calcification", 960)):
        assert f"    {name}: {n}\n" in printed  # the unmapped classes, by name
    # independently: every raw row is a mapped region, an unmapped class or "No finding"
    with gzip.open(src, "rt", newline="") as fh:
        raw = collections.Counter(row["class_name"] for row in csv.DictReader(fh))
    assert sum(n for c, n in raw.items() if c.lower() in VINDR_MAP) == 28278
    assert sum(raw.values()) == 67914
    rois = load_rois(out)
    assert sum(len(v) for v in rois.values()) == 28278 and all(r.box is not None for v in rois.values() for r in v)


CHESTX_DET = {  # (split, regions per finding, unmapped per class, images)
    "test": ({"Consolidation": 453, "Pleural Effusion": 378, "Lung Lesion": 267, "Fracture": 115,
              "Pleural Other": 105, "Cardiomegaly": 70, "Atelectasis": 51, "Pneumothorax": 42},
             {"Fibrosis": 120, "Calcification": 67, "Emphysema": 66}, 553),
    "train": ({"Consolidation": 2110, "Pleural Effusion": 1734, "Lung Lesion": 1176, "Fracture": 546,
               "Pleural Other": 526, "Atelectasis": 289, "Cardiomegaly": 223, "Pneumothorax": 169},
              {"Fibrosis": 619, "Calcification": 281, "Emphysema": 232}, 3025),
}


@pytest.mark.parametrize("split", ["test", "train"])
def test_chestx_det_real_annotations(split, tmp_path, capsys):
    src = REAL / "annotations" / "chestx_det" / f"ChestX_Det_{split}.json"
    out = tmp_path / "rois.jsonl"
    per_finding, unmapped, images = CHESTX_DET[split]
    # the test split with its polygons rasterised (one PNG per region); the train split boxes only (faster)
    extra = [] if split == "test" else ["--boxes-only"]
    assert main(["--format", "chestx-det", str(src), "--out", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    total = sum(per_finding.values())
    assert _counts(out) == per_finding
    assert f"wrote {total} regions" in printed and f"images: {images}" in printed
    for name, n in unmapped.items():
        assert f"    {name}: {n}\n" in printed
    raw = json.loads(src.read_text())
    syms = collections.Counter(s for entry in raw for s in entry["syms"])
    assert sum(n for s, n in syms.items() if s.lower() in CHESTX_DET_MAP) == total
    assert {s: n for s, n in syms.items() if s.lower() not in CHESTX_DET_MAP} == unmapped
    rois = load_rois(out)
    masks = [r.mask for v in rois.values() for r in v if r.mask]
    if split == "train":
        assert masks == [] and not (tmp_path / "masks").exists()
        return
    assert len(masks) == total == len(list((tmp_path / "masks").glob("*.png")))
    # one mask checked against its polygon: inside its box, 1024x1024, non-empty
    entry = next(e for e in raw if e["syms"] and e["syms"][0].lower() in CHESTX_DET_MAP)
    first = rois[Path(entry["file_name"]).stem][0]
    mask = np.asarray(Image.open(tmp_path / first.mask)) > 0
    assert mask.shape == (1024, 1024) and mask.any()
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = first.box
    assert x0 - 1 <= xs.min() and xs.max() <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() <= y1 + 1


def test_chestx_det_regions_reach_nih_studies_through_an_id_map(tmp_path, capsys):
    """ChestX-Det's numbered images are NIH frames: mapped to NIH names (``--id-map``) its regions
    load with ``data.source: nih`` from ROOT/rois.jsonl, and equal the sample's own ChestX-Det
    boxes (boxes.csv, in the 64x64 frame: 1024 / 16)."""
    from kdistill.data.sources import open_source

    sample = REAL / "nih_64"
    with (sample / "labels.csv").open(newline="") as fh:
        labels = list(csv.DictReader(fh))
    id_map = tmp_path / "ids.csv"
    id_map.write_text("chestx_det,nih\n" + "".join(f"{r['chestx_det_id']},{Path(r['image']).name}\n"
                                                    for r in labels if r["chestx_det_id"]))
    root = tmp_path / "root"
    root.mkdir()
    for name in ("labels.csv", "images"):  # not boxes.csv: every region below comes from rois.jsonl
        (root / name).symlink_to(sample / name)
    parts = []
    for split in ("train", "test"):
        out = tmp_path / f"{split}.jsonl"
        assert main(["--format", "chestx-det", str(REAL / "annotations" / "chestx_det" / f"ChestX_Det_{split}.json"),
                     "--out", str(out), "--boxes-only", "--id-map", str(id_map)]) == 0
        assert "regions_not_in_id_map" in capsys.readouterr().out
        parts.append(out.read_text())
    (root / "rois.jsonl").write_text("".join(parts))
    studies = open_source("nih", root).load_studies(views=None, check_images=False)
    got = sorted((s.study_id, r.finding, *(round(v / 16, 2) for v in r.box)) for s in studies for r in s.rois)
    with (sample / "boxes.csv").open(newline="") as fh:
        want = sorted((Path(b["image"]).stem, CHESTX_DET_MAP[b["label"].lower()],
                       *(float(b[k]) for k in ("x1", "y1", "x2", "y2")))
                      for b in csv.DictReader(fh) if b["source"] == "chestx_det" and b["label"].lower() in CHESTX_DET_MAP)
    assert len(got) == len(want) > 100
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert np.allclose([g[2:] for g in got], [w[2:] for w in want], atol=0.011)
