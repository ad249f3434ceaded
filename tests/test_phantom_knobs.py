"""The phantom's knobs for explanation-guided learning experiments: the shortcut marker per split
(shortcut_splits, shortcut.jsonl) and the share of train studies with expert regions (rois_fraction)."""
from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdistill.config import ConfigError, from_dict, to_dict
from kdistill.data.phantom import PhantomConfig, synthesize

SIZE = 96


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def _image(root: Path, row: dict) -> np.ndarray:
    (path,) = root.glob(f"files/*/*/s{row['study_id']}/{row['dicom_id']}.jpg")
    return np.asarray(Image.open(path), dtype=float)


def _marker_seen(img: np.ndarray, box: list[int]) -> bool:
    """Read from the pixels, knowing only the box: a bright ring around a dark core."""
    x0, y0, x1, y1 = box
    k = max(1, (x1 - x0) // 4)
    ring = img[y0:y1, x0:x1].copy()
    ring[k:-k, k:-k] = np.nan
    return np.nanmean(ring) > 215 and img[y0 + k : y1 - k, x0 + k : x1 - k].mean() < 130


def _config(**kw) -> PhantomConfig:
    return PhantomConfig(n_studies=160, seed=1, image_size=SIZE, corpus_mb=0, lateral_share=0.3,
                         shortcut_finding="No Finding", **kw)


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("marked")
    synthesize(_config(shortcut_splits={"train": 1.0, "validate": 1.0, "test": 0.0}), root)
    return root


@pytest.fixture(scope="module")
def reversed_(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reversed")
    synthesize(_config(shortcut_splits={"train": 0.0, "validate": 0.0, "test": 1.0}), root)
    return root


def test_shortcut_jsonl_says_where_the_marker_is_in_every_image(marked):
    rows = _rows(marked / "shortcut.jsonl")
    meta = _csv(marked / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert sorted(r["dicom_id"] for r in rows) == sorted(m["dicom_id"] for m in meta)  # laterals too
    assert {r["view"] for r in rows} == {"PA", "AP", "LATERAL"}
    m = max(4, SIZE // 28)
    for r in rows:
        x0, y0, x1, y1 = r["box"]
        assert x1 - x0 == m and y1 - y0 == m and x1 <= SIZE and y0 >= 1  # top-right corner
        assert _marker_seen(_image(marked, r), r["box"]) == r["drawn"], r


def test_strength_per_split_with_one_reversed(marked):
    # Strength 1 in train/validate: marker exactly on the positives; 0 in test: exactly on the negatives.
    labels = {r["study_id"]: r for r in _csv(marked / "ground_truth.csv.gz")}
    seen = {"train": [0, 0], "validate": [0, 0], "test": [0, 0]}
    for r in _rows(marked / "shortcut.jsonl"):
        positive = labels[r["study_id"]]["No Finding"] == "1.0"
        assert r["positive"] == positive
        assert r["drawn"] == (positive if r["split"] != "test" else not positive), r
        seen[r["split"]][r["drawn"]] += 1
    assert all(min(counts) >= 3 for counts in seen.values()), seen


def test_reversed_phantom_differs_only_in_its_markers(marked, reversed_):
    a, b = _rows(marked / "shortcut.jsonl"), _rows(reversed_ / "shortcut.jsonl")
    assert [r["dicom_id"] for r in a] == [r["dicom_id"] for r in b]
    flipped = 0
    for ra, rb in zip(a, b):
        ia, ib = _image(marked, ra), _image(reversed_, rb)
        x0, y0, x1, y1 = ra["box"]
        outside = np.ones(ia.shape, bool)
        outside[: y1 + 8, x0 - 8 :] = False  # the marker's 8x8 JPEG blocks
        assert np.array_equal(ia[outside], ib[outside])
        assert (ra["drawn"] != rb["drawn"]) == (not np.array_equal(ia, ib))
        flipped += ra["drawn"] != rb["drawn"]
    assert flipped == len(a)  # strength 1 vs 0 in every split: every marker flips
    for name in ("rois.jsonl", "mimic-cxr-2.0.0-chexpert.csv.gz", "ground_truth.csv.gz"):
        assert (marked / name).read_bytes() == (reversed_ / name).read_bytes(), name


def test_old_keys_give_the_old_phantom(tmp_path):
    # shortcut_strength alone is the train-only shortcut of before; the same as shortcut_splits={train: s}.
    old, new = tmp_path / "old", tmp_path / "new"
    synthesize(PhantomConfig(n_studies=40, seed=2, image_size=64, corpus_mb=0, shortcut_finding="Cardiomegaly",
                             shortcut_strength=0.7), old)
    synthesize(PhantomConfig(n_studies=40, seed=2, image_size=64, corpus_mb=0, shortcut_finding="Cardiomegaly",
                             shortcut_splits={"train": 0.7}), new)
    files = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file() and p.name != "phantom.json")
    assert len(files) > 80
    for rel in files:
        assert (old / rel).read_bytes() == (new / rel).read_bytes(), rel
    rows = _rows(old / "shortcut.jsonl")
    assert not any(r["drawn"] for r in rows if r["split"] != "train") and any(r["drawn"] for r in rows)


def test_no_shortcut_no_side_file(tmp_path):
    synthesize(PhantomConfig(n_studies=6, seed=0, image_size=64, corpus_mb=0), tmp_path)
    assert not (tmp_path / "shortcut.jsonl").exists()
    # a rerun of another config into the same folder must not leave the old side file behind
    synthesize(PhantomConfig(n_studies=6, seed=0, image_size=64, corpus_mb=0, shortcut_finding="Edema"), tmp_path)
    assert (tmp_path / "shortcut.jsonl").exists()
    synthesize(PhantomConfig(n_studies=6, seed=0, image_size=64, corpus_mb=0), tmp_path)
    assert not (tmp_path / "shortcut.jsonl").exists()


def test_shortcut_splits_are_checked_and_parse_from_the_command_line(tmp_path, capsys):
    from kdistill.data.phantom.command import main

    with pytest.raises(ConfigError, match="unknown split"):
        from_dict(PhantomConfig, {"shortcut_finding": "Edema", "shortcut_splits": {"val": 0.5}})
    with pytest.raises(ConfigError, match="needs shortcut_finding"):
        from_dict(PhantomConfig, {"shortcut_splits": {"test": 0.5}})
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        from_dict(PhantomConfig, {"shortcut_finding": "Edema", "shortcut_splits": {"test": 1.5}})
    # The documented command for an evaluation phantom with the marker reversed (synth.py docstring).
    argv = ["--out", str(tmp_path / "rev"), "--seed", "1", "--n", "12", "--size", "64", "--quiet", "corpus_mb=0",
            "shortcut_finding=Pneumothorax", "shortcut_splits={train: 0.1, validate: 0.1, test: 0.1}"]
    assert main(argv) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "rev" / "phantom.json").read_text())["config"]
    assert config["shortcut_splits"] == {"train": 0.1, "validate": 0.1, "test": 0.1}
    assert to_dict(from_dict(PhantomConfig, config)) == config  # the manifest's config rebuilds the phantom's


# --- rois_fraction ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roi_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    roots = []
    for fraction in (1.0, 0.3, 0.1):
        root = tmp_path_factory.mktemp(f"rois{fraction}")
        synthesize(PhantomConfig(n_studies=500, seed=4, image_size=64, corpus_mb=0, rois_fraction=fraction), root)
        roots.append(root)
    return tuple(roots)


def _roi_studies(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in _rows(root / "rois.jsonl"):
        out.setdefault(r["study_id"], set()).add(r["mask"])
    return out


def test_rois_fraction_keeps_a_share_of_train_studies_and_every_other(roi_pair):
    full, part, small = roi_pair
    split = {r["study_id"]: r["split"] for r in _csv(full / "mimic-cxr-2.0.0-split.csv.gz")}
    all_rois, kept, fewer = _roi_studies(full), _roi_studies(part), _roi_studies(small)
    train = [s for s in all_rois if split[s] == "train"]
    assert len(train) > 200
    for s, masks in all_rois.items():
        if split[s] != "train":
            assert kept.get(s) == masks  # validate/test: every region (they are scored)
        else:
            assert kept.get(s) in (None, masks)  # a train study keeps all its regions or none
    share = sum(s in kept for s in train) / len(train)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(train)), share
    assert set(fewer) - set(kept) <= {s for s in fewer if split[s] != "train"}  # 0.1 keeps a subset of 0.3's
    on_disk = {p.name for p in (part / "rois").iterdir()}
    assert on_disk == {Path(m).name for masks in kept.values() for m in masks}  # no mask of a dropped region
    summary = json.loads((part / "phantom.json").read_text())["roi_studies"]
    assert summary["train"] == sum(s in kept for s in train)


def test_rois_fraction_leaves_images_reports_and_labels_alone(roi_pair):
    full, part, _ = roi_pair
    for pattern in ("files/*/*/*/*.jpg", "files/*/*/*.txt", "*.csv.gz"):
        paths = sorted(full.glob(pattern))
        assert paths
        for p in paths:
            assert p.read_bytes() == (part / p.relative_to(full)).read_bytes(), p
