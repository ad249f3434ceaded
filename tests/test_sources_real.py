"""Dataset sources on the real public files in ../shared/realdata (NIH ChestX-ray14, CheXpert):
counts match the files, the documented label mapping holds, the real quirks are handled."""
from __future__ import annotations

import collections
import csv
import gzip
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fixtures.realdata import find_realdata
from kdistill.data.nih import chexpert_labels
from kdistill.data.sources import get_source, open_source, source_names
from kdistill.errors import DataError, SkipCounter
from kdistill.labels import FINDING_INDEX, FINDINGS

REAL = find_realdata("nih_64/labels.csv")
pytestmark = pytest.mark.skipif(REAL is None, reason="../shared/realdata not found beside the checkout")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    data = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def test_the_registry_names_every_source_and_what_it_carries():
    assert {"mimic", "chexpert", "nih"} <= set(source_names())
    assert get_source("mimic").has_reports and not get_source("nih").has_reports and not get_source("chexpert").has_reports
    with pytest.raises(ValueError, match="unknown data source 'vindr'.*nih"):
        get_source("vindr")


def test_nih_label_mapping_by_hand():
    row = chexpert_labels(["Effusion", "Infiltration"])
    assert row[FINDING_INDEX["Pleural Effusion"]] == 1.0 and row[FINDING_INDEX["Lung Opacity"]] == 1.0
    assert row[FINDING_INDEX["Cardiomegaly"]] == 0.0 and row[FINDING_INDEX["No Finding"]] == 0.0
    for name in ("Enlarged Cardiomediastinum", "Fracture", "Support Devices"):
        assert math.isnan(row[FINDING_INDEX[name]])  # no NIH source: blank, not negative
    assert chexpert_labels(["Nodule"])[FINDING_INDEX["Lung Lesion"]] == 1.0
    assert chexpert_labels(["Pleural_Thickening"])[FINDING_INDEX["Pleural Other"]] == 1.0
    assert sum(v == 1.0 for v in chexpert_labels(["Hernia"])) == 0
    with pytest.raises(ValueError, match="Efusion"):
        chexpert_labels(["Efusion"])


@pytest.fixture(scope="module")
def nih_official(tmp_path_factory):
    """The published NIH index and box files (no images: check_images off), linked into a root,
    and the studies loaded from them."""
    root = tmp_path_factory.mktemp("nih")
    for name in ("Data_Entry_2017_v2020.csv.gz", "BBox_List_2017.csv.gz"):
        (root / name).symlink_to(REAL / "annotations" / "nih" / name)
    return root, open_source("nih", root).load_studies(views=None, check_images=False)


def test_nih_official_index_every_image_with_labels_split_by_patient(nih_official):
    root, studies = nih_official
    rows = _csv_rows(REAL / "annotations" / "nih" / "Data_Entry_2017_v2020.csv.gz")
    assert len(studies) == len(rows) == 112120
    # per CheXpert finding, the positives are exactly the images carrying a mapped NIH label ('|'-separated)
    named = collections.Counter(label for r in rows for label in r["Finding Labels"].split("|"))
    labels = np.array([s.labels for s in studies])
    assert int((labels[:, FINDING_INDEX["Pleural Effusion"]] == 1).sum()) == named["Effusion"]
    assert int((labels[:, FINDING_INDEX["Cardiomegaly"]] == 1).sum()) == named["Cardiomegaly"]
    lesion = sum(1 for r in rows if {"Mass", "Nodule"} & set(r["Finding Labels"].split("|")))
    assert int((labels[:, FINDING_INDEX["Lung Lesion"]] == 1).sum()) == lesion
    assert np.isnan(labels[:, FINDING_INDEX["Fracture"]]).all()
    # NIH's own labels, follow-up numbers and ages are kept
    first = studies[0]
    assert first.meta["nih_labels"] == rows[0]["Finding Labels"].split("|")
    assert first.meta["follow_up"] == int(rows[0]["Follow-up #"]) and first.meta["age"] == int(rows[0]["Patient Age"])
    # patient-wise: no patient in two splits; roughly the configured fractions
    splits_of = collections.defaultdict(set)
    for s in studies:
        splits_of[s.subject_id].add(s.split)
    assert all(len(v) == 1 for v in splits_of.values())
    share = collections.Counter(s.split for s in studies)
    assert abs(share["train"] / len(studies) - 0.7) < 0.03 and abs(share["test"] / len(studies) - 0.2) < 0.03
    # the split is a function of (patient, seed): another seed moves patients
    from kdistill.data.nih import _splits
    rows_ = [{"image": s.study_id + ".png", "patient_id": s.subject_id} for s in studies]
    assert [v for v in _splits(root, rows_, 0, (0.7, 0.1, 0.2)).values()] == [s.split for s in studies]
    assert [v for v in _splits(root, rows_, 1, (0.7, 0.1, 0.2)).values()] != [s.split for s in studies]


def test_nih_official_boxes_read_positionally_and_mapped(nih_official):
    _, studies = nih_official
    boxes = _csv_rows(REAL / "annotations" / "nih" / "BBox_List_2017.csv.gz")
    rois = [(s.study_id, r) for s in studies for r in s.rois]
    assert len(rois) == len(boxes) == 984  # every BBox_List label maps (Infiltrate -> Lung Opacity)
    # the header's 'Bbox [x,y,w,h]' is unquoted, so it reads as four columns: take the numbers by position
    name, label, x, y, w, h = list(boxes[0].values())[:6]
    match = [r for sid, r in rois if sid == Path(name).stem and r.box[0] == pytest.approx(float(x))]
    assert match and match[0].finding == "Atelectasis" == label
    assert match[0].box[2:] == pytest.approx((float(x) + float(w), float(y) + float(h)))
    assert all(r.box[2] > r.box[0] and r.box[3] > r.box[1] for _, r in rois)


def test_nih_sample_of_real_radiographs_loads_with_the_documented_mapping():
    root = REAL / "nih_64"
    studies = open_source("nih", root).load_studies(views=None)
    rows = {Path(r["image"]).stem: r for r in _csv_rows(root / "labels.csv")}
    assert len(studies) == len(rows) == 996
    for s in studies:  # our mapping from NIH's labels equals the sample's own CheXpert columns
        want = [float(rows[s.study_id][f]) if rows[s.study_id][f] != "" else math.nan for f in FINDINGS]
        assert np.array_equal(np.array(s.labels), np.array(want), equal_nan=True), s.study_id
        assert Path(s.image_paths[0]).is_file()
    n_boxes = len(_csv_rows(root / "boxes.csv"))
    mapped = sum(len(s.rois) for s in studies)
    assert 0 < mapped < n_boxes  # ChestX-Det classes outside the 14 (Fibrosis, Calcification, ...) are left out
    assert {r.finding for s in studies for r in s.rois} <= set(FINDINGS)
    assert all(0 <= v <= 64 for s in studies for r in s.rois for v in r.box)  # the 64x64 frame


def test_nih_images_missing_on_disk_are_counted_and_named(tmp_path):
    rows = _csv_rows(REAL / "nih_64" / "labels.csv")[:3]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / Path(rows[0]["image"]).name).symlink_to(REAL / "nih_64" / rows[0]["image"])
    with pytest.raises(DataError, match=Path(rows[1]["image"]).name):
        open_source("nih", tmp_path).load_studies(views=None)
    counter = SkipCounter("skip")
    studies = open_source("nih", tmp_path).load_studies(views=None, on_error="skip", counter=counter)
    assert len(studies) == 1 and counter.counts["missing_image"] == 2
    assert Path(rows[2]["image"]).name in " ".join(counter.examples["missing_image"])


def test_chexpert_real_train_csv_counts_match_the_file(tmp_path):
    (tmp_path / "train.csv.gz").symlink_to(REAL / "annotations" / "chexpert" / "train.csv.gz")
    studies = open_source("chexpert", tmp_path).load_studies(splits=["train"], views=None, images="all",
                                                             check_images=False)
    rows = _csv_rows(REAL / "annotations" / "chexpert" / "train.csv.gz")
    assert len(rows) == 223414
    by_study = {}
    for r in rows:  # the loader keeps a study's first image's labels (CheXpert labels per study)
        parts = Path(r["Path"]).parts
        by_study.setdefault(f"{parts[-3]}_{parts[-2]}", r)
    assert len(studies) == len(by_study)
    labels = np.array([s.labels for s in studies])
    for j, finding in enumerate(FINDINGS):
        values = collections.Counter(r[finding] for r in by_study.values())
        for raw, value in (("1.0", 1.0), ("0.0", 0.0), ("-1.0", -1.0)):
            assert int((labels[:, j] == value).sum()) == values[raw], (finding, raw)
        assert int(np.isnan(labels[:, j]).sum()) == values[""], finding
    assert sum(len(s.image_paths) for s in studies) == len(rows)


def test_chexpert_path_prefix_resolves_against_the_users_root(tmp_path):
    from PIL import Image

    rows = _csv_rows(REAL / "annotations" / "chexpert" / "train.csv.gz")[:4]
    root = tmp_path / "CheXpert-v1.0-small"
    for r in rows:  # the CSV says CheXpert-v1.0-small/train/...; the images sit under ROOT/train/...
        image = root.joinpath(*Path(r["Path"]).parts[1:])
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    with (root / "train.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    studies = open_source("chexpert", root).load_studies(splits=["train"], views=None, images="all")
    assert sum(len(s.image_paths) for s in studies) == 4
    assert all(Path(p).is_file() and Path(p).is_relative_to(root) for s in studies for p in s.image_paths)


def test_data_check_on_nih_names_missing_and_corrupt_images_and_counts_the_rest(tmp_path, capsys):
    """`kdistill data check ROOT --source nih` on real files: three rows, one image missing, one cut short."""
    from kdistill import cli

    rows = _csv_rows(REAL / "nih_64" / "labels.csv")[:3]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "images").mkdir()
    good, cut, gone = (Path(r["image"]).name for r in rows)
    (tmp_path / "images" / good).symlink_to(REAL / "nih_64" / rows[0]["image"])
    data = (REAL / "nih_64" / rows[1]["image"]).read_bytes()
    (tmp_path / "images" / cut).write_bytes(data[: len(data) // 2])  # a truncated PNG
    code = cli.main(["data", "check", str(tmp_path), "--source", "nih", "--json", str(tmp_path / "check.json")])
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["issue_counts"] == {"missing_image": 1, "corrupt_image": 1}
    assert gone in out and cut in out and "studies: 2" in out
    want = sum(1 for r in rows[:2] for f in FINDINGS if r[f] in ("1", "1.0"))
    assert want >= 2  # both kept studies are labelled (No Finding at least)
    assert sum(p["positive"] for p in report["counts"]["label_prevalence"].values()) == want


@pytest.mark.slow
def test_the_nih_sample_config_runs_on_real_radiographs(tmp_path):
    """configs/nih_sample.yaml as shipped: data, prepare, student, eval, explain on the 996 real NIH
    images (the teacher stages skipped: no reports); the student ranks findings better than chance
    and its test micro-AUC beats the constant-prevalence baseline the summary prints beside it."""
    from kdistill import pipeline

    repo = Path(__file__).resolve().parents[1]
    config = repo / "configs" / "nih_sample.yaml"
    run_dir = tmp_path / "run"
    assert pipeline.main([str(config), "--out", str(run_dir), f"data.root={REAL / 'nih_64'}"]) == 0
    stages = json.loads((run_dir / "summary.json").read_text())["stages"]
    assert {k: v for k, v in stages.items() if k.startswith("teacher")} == {
        "teacher_pretrain": pipeline.NO_TEXT, "teacher_train": pipeline.NO_TEXT, "teacher_generate": pipeline.NO_TEXT}
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["test/auc_micro_14"] > 0.7
    assert (run_dir / "explain" / "index.html").is_file()
