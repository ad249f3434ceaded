"""kdistill.data.mimic and kdistill.data.chexpert on small hand-made trees with real-world quirks."""
from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures.kd_data.tree import build_tree, expected_labels
from kdistill.data.chexpert import load_chexpert
from kdistill.data.mimic import load_studies
from kdistill.errors import DataError, SkipCounter
from kdistill.labels import FINDINGS, apply_policy


def same_labels(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b)) and len(a) == len(b)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("mimic"))


def by_id(studies):
    return {s.study_id: s for s in studies}


def test_loads_every_study_with_splits_reports_and_raw_labels(tree):
    studies = by_id(load_studies(tree))
    assert list(studies) == ["50414267", "53189527", "57375967", "59999999"]  # metadata order
    assert {k: s.split for k, s in studies.items()} == {"50414267": "train", "53189527": "train",
                                                        "57375967": "validate", "59999999": "test"}
    for study_id, study in studies.items():
        assert same_labels(study.labels, expected_labels(study_id)), study_id
    assert studies["57375967"].labels[FINDINGS.index("Pneumonia")] == -1.0
    assert all(math.isnan(v) for v in studies["59999999"].labels)  # missing from chexpert.csv
    # the wet-read preamble is not part of the sections; impression-only report has no findings
    assert studies["57375967"].findings == "Left lower lobe consolidation. Heart size is normal."
    assert studies["57375967"].impression == "Left lower lobe pneumonia."
    assert studies["53189527"].findings == "" and studies["53189527"].impression == "No acute cardiopulmonary process."
    assert studies["53189527"].report == "IMPRESSION: No acute cardiopulmonary process."


def test_first_image_prefers_views_in_order_and_skips_lateral(tree):
    study = by_id(load_studies(tree))["50414267"]
    assert study.dicom_ids == ["d-pa-1"] and study.view == "PA"
    assert Path(study.image_paths[0]) == tree / "files/p10/p10000032/s50414267/d-pa-1.jpg"
    ap_first = by_id(load_studies(tree, views=("AP", "PA")))["50414267"]
    assert ap_first.dicom_ids == ["d-ap-1"] and ap_first.view == "AP"


def test_all_images_and_all_views(tree):
    frontal = by_id(load_studies(tree, images="all"))["50414267"]
    assert frontal.dicom_ids == ["d-pa-1", "d-ap-1"]
    every = by_id(load_studies(tree, views=None, images="all"))["50414267"]
    assert every.dicom_ids == ["d-lat-1", "d-pa-1", "d-ap-1"]  # metadata order when views=None
    lateral_only = load_studies(tree, views=("LATERAL",))
    assert [s.study_id for s in lateral_only] == ["50414267"]


def test_split_filter(tree):
    assert [s.study_id for s in load_studies(tree, splits=["validate", "test"])] == ["57375967", "59999999"]
    with pytest.raises(ValueError, match="unknown split"):
        load_studies(tree, splits=["val"])


def test_rois_attach_to_the_loaded_image_only(tree):
    study = by_id(load_studies(tree))["50414267"]
    assert [(r.finding, r.box, r.mask) for r in study.rois] == [
        ("Cardiomegaly", (8.0, 10.0, 24.0, 30.0), None), ("Pleural Effusion", None, "masks/effusion.png")]
    every = by_id(load_studies(tree, views=None, images="all"))["50414267"]
    assert "Atelectasis" in [r.finding for r in every.rois]  # the LATERAL's region comes with the LATERAL


def test_gzipped_csvs_give_the_same_studies(tmp_path, tree):
    gz = build_tree(tmp_path / "gz", gz=True)
    assert sorted(gz.glob("*.csv.gz")) and not list(gz.glob("*.csv"))
    a, b = load_studies(tree), load_studies(gz)
    assert [(s.study_id, s.findings, s.impression, s.dicom_ids) for s in a] == \
           [(s.study_id, s.findings, s.impression, s.dicom_ids) for s in b]


def test_labels_policy_is_left_to_consumers(tree):
    study = by_id(load_studies(tree))["57375967"]
    targets, mask = apply_policy(study.labels, uncertain="ones", blank="zeros")
    assert targets[FINDINGS.index("Pneumonia")] == 1.0 and targets[FINDINGS.index("Cardiomegaly")] == 0.0
    assert mask.sum() == 14


def test_missing_image_raises_or_is_counted(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / "files/p10/p10000764/s57375967/d-pa-3.jpg").unlink()
    with pytest.raises(DataError, match="d-pa-3.jpg"):
        load_studies(root)
    counter = SkipCounter("skip")
    studies = load_studies(root, on_error="skip", counter=counter)
    assert "57375967" not in by_id(studies) and len(studies) == 3
    assert counter.summary() == {"missing_image": 1, "study_without_images": 1}


def test_missing_report_and_bad_label_are_named(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / "files/p10/p10000032/s53189527.txt").unlink()
    with pytest.raises(DataError, match="s53189527.txt"):
        load_studies(root)
    text = (root / "mimic-cxr-2.0.0-chexpert.csv").read_text().replace("-1.0", "2.0")
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(text)
    counter = SkipCounter("skip")
    load_studies(root, on_error="skip", counter=counter)
    assert counter.summary() == {"missing_report": 1, "bad_label": 1}
    assert "Pneumonia = '2.0'" in counter.examples["bad_label"][0]


def test_missing_csv_is_a_data_error(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-split.csv.gz: file not found"):
        load_studies(root)


def write_chexpert(root: Path) -> Path:
    """A CheXpert-v1.0-small folder: 2 train studies (one frontal+lateral), 1 valid study."""
    base = root / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
              "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
              "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
    rows = {
        "train": [
            ["train/patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP", "1.0"] + [""] * 12 + ["1.0"],
            ["train/patient00002/study2/view1_frontal.jpg", "Female", "87", "Frontal", "PA", "", "", "-1.0", "1.0",
             "", "-1.0", "-1.0", "", "-1.0", "", "", "", "1.0", ""],
            ["train/patient00002/study2/view2_lateral.jpg", "Female", "87", "Lateral", "", "", "", "-1.0", "1.0",
             "", "-1.0", "-1.0", "", "-1.0", "", "", "", "1.0", ""],
        ],
        "valid": [["valid/patient64541/study1/view1_frontal.jpg", "Male", "73", "Frontal", "AP", "", "1.0", "1.0",
                   "1.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0"]],
    }
    for name, items in rows.items():
        with open(base / f"{name}.csv", "w", newline="") if base.exists() else _mk(base, name) as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in items:
                row = [f"CheXpert-v1.0-small/{row[0]}"] + row[1:]
                writer.writerow(row)
                image = base / row[0].split("/", 1)[1]
                image.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((20, 16), 90, np.uint8)).save(image)
    return base


def _mk(base: Path, name: str):
    base.mkdir(parents=True, exist_ok=True)
    return open(base / f"{name}.csv", "w", newline="")


def test_chexpert_loader(tmp_path):
    base = write_chexpert(tmp_path)
    studies = by_id(load_chexpert(base))
    assert list(studies) == ["patient00001_study1", "patient00002_study2", "patient64541_study1"]
    s2 = studies["patient00002_study2"]
    assert s2.split == "train" and s2.view == "PA" and s2.subject_id == "patient00002"
    assert s2.findings == "" and s2.impression == ""
    assert s2.labels[FINDINGS.index("Cardiomegaly")] == -1.0 and s2.labels[FINDINGS.index("Lung Opacity")] == 1.0
    assert s2.labels[FINDINGS.index("Fracture")] == 1.0 and s2.labels[FINDINGS.index("Edema")] == -1.0
    assert math.isnan(s2.labels[FINDINGS.index("Lung Lesion")])  # blank -> NaN
    assert studies["patient64541_study1"].split == "validate"
    assert studies["patient00001_study1"].labels[FINDINGS.index("Support Devices")] == 1.0
    every = by_id(load_chexpert(base, views=None, images="all"))
    assert every["patient00002_study2"].dicom_ids == ["view1_frontal", "view2_lateral"]
    assert Path(every["patient00002_study2"].image_paths[1]).is_file()
    # a root above the dataset folder resolves the same paths
    shutil.copy(base / "train.csv", tmp_path / "train.csv")
    assert len(load_chexpert(tmp_path, splits=["train"])) == 2
