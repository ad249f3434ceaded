"""``kdistill data prepare``: the Arrow cache's contents, resumption after an interruption, parallel
shards equal to serial ones, counted skips, the pipeline stage."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import kdistill.data.prepare as prep
from fixtures.kd_data.tree import GREY, build_tree, expected_labels
from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX

S = 16
PA1 = "files/p10/p10000032/s50414267/d-pa-1.jpg"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    meta = prep.prepare(tree, out, size=S, workers=1, shard_size=1)
    return out, meta


def assert_same(a, b):
    """Two DatasetDicts hold the same rows (NaN labels compare equal)."""
    assert list(a) == list(b)
    for split in a:
        left, right = a[split].with_format("numpy")[:], b[split].with_format("numpy")[:]
        assert list(left) == list(right)
        for column in left:
            if column == "roi_boxes":
                assert [x.tolist() for x in left[column]] == [x.tolist() for x in right[column]]
            else:
                np.testing.assert_array_equal(left[column], right[column], err_msg=f"{split}.{column}")


def rows(dataset):
    return {r["study_id"]: r for r in dataset.with_format("numpy")}


def test_cache_layout_and_meta(prepared, tree):
    out, meta = prepared
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "meta.json"]  # no temp or work folders left
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == meta
    assert meta["size"] == S and meta["root"] == str(tree)
    assert meta["counts"] == {"train": 2, "validate": 1, "test": 1, "skipped": {}}
    ds = prep.load_prepared(out)
    assert list(ds) == ["train", "validate", "test"]
    assert ds["train"].features["image"].dtype == "uint8" and ds["train"].features["roi_bits"].dtype == "uint16"
    assert prep.load_prepared(out / "dataset")["test"].num_rows == 1


def test_images_labels_and_reports(prepared):
    ds = prep.load_prepared(prepared[0])
    train = rows(ds["train"])
    for study_id, dicom_id in [("50414267", "d-pa-1"), ("53189527", "d-ap-2")]:
        row = train[study_id]
        assert row["dicom_id"] == dicom_id and row["image"].shape == (S, S)
        assert np.abs(row["image"].astype(int) - GREY[dicom_id]).max() <= 2  # constant grey survives the resize
        labels = row["labels"].tolist()
        assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(labels, expected_labels(study_id)))
    assert train["53189527"]["findings"] == "" and train["53189527"]["impression"] == "No acute cardiopulmonary process."
    assert train["50414267"]["view"] == "PA"
    test = rows(ds["test"])["59999999"]
    assert np.isnan(test["labels"]).all() and len(test["roi_boxes"]) == 0 and not test["roi_bits"].any()


def test_rois_are_rescaled_per_axis(prepared):
    row = rows(prep.load_prepared(prepared[0])["train"])["50414267"]
    # PA image is 32 wide x 40 high -> 16x16: x * 0.5, y * 0.4.
    # Cardiomegaly box [8, 10, 24, 30] -> [4, 4, 12, 12]; the effusion mask (rows 20-39, cols 0-15)
    # -> rows 8-15, cols 0-7, whose bounding box is [0, 8, 8, 16]. The LATERAL's region is not here.
    boxes = [list(map(float, b)) for b in row["roi_boxes"]]
    card, eff = FINDING_INDEX["Cardiomegaly"], FINDING_INDEX["Pleural Effusion"]
    assert boxes == [[card, 4, 4, 12, 12], [eff, 0, 8, 8, 16]]
    expected = np.zeros((S, S), np.uint16)
    expected[4:12, 4:12] |= 1 << card
    expected[8:16, 0:8] |= 1 << eff
    np.testing.assert_array_equal(row["roi_bits"], expected)


def test_all_images_gives_one_row_per_image(tree, tmp_path):
    meta = prep.prepare(tree, tmp_path / "p", size=S, workers=1, images="all", views=None)
    assert meta["counts"]["train"] == 4
    train = prep.load_prepared(tmp_path / "p")["train"]
    assert list(zip(train["dicom_id"], train["view"])) == [("d-lat-1", "LATERAL"), ("d-pa-1", "PA"),
                                                            ("d-ap-1", "AP"), ("d-ap-2", "AP")]
    lateral = train.with_format("numpy")[0]
    assert lateral["roi_boxes"].tolist() == [[FINDING_INDEX["Atelectasis"], 0, 0, 2, 1.6000000238418579]]


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tree, tmp_path, monkeypatch, prepared):
    real = prep.read_resized_uint8
    calls = []

    def flaky(path, size):
        calls.append(Path(path).name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine goes away while the third shard is being read
        return real(path, size)

    monkeypatch.setattr(prep, "read_resized_uint8", flaky)
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(tree, out, size=S, workers=1, shard_size=1)
    assert not (out / "meta.json").exists() and not (out / "dataset").exists()
    [work] = list(out.glob(".work-*"))
    assert len([p for p in (work / "shards").iterdir() if p.is_dir() and ".tmp" not in p.name]) == 2
    calls.clear()
    monkeypatch.setattr(prep, "read_resized_uint8", lambda p, s: (calls.append(Path(p).name), real(p, s))[1])
    prep.prepare(tree, out, size=S, workers=1, shard_size=1)
    assert len(calls) == 2  # only the two shards not yet written
    assert_same(prep.load_prepared(out), prep.load_prepared(prepared[0]))
    calls.clear()
    prep.prepare(tree, out, size=S, workers=1, shard_size=1)
    assert calls == []  # up to date: nothing read again


def test_parallel_shards_equal_serial(tree, tmp_path, prepared):
    prep.prepare(tree, tmp_path / "par", size=S, workers=2, shard_size=1)
    assert_same(prep.load_prepared(tmp_path / "par"), prep.load_prepared(prepared[0]))


def test_corrupt_image_raises_or_is_counted(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / PA1).write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match="d-pa-1.jpg"):
        prep.prepare(root, tmp_path / "a", size=S, workers=1)
    meta = prep.prepare(root, tmp_path / "b", size=S, workers=1, on_error="skip", shard_size=1)  # a 0-row shard
    assert meta["counts"]["train"] == 1 and meta["counts"]["skipped"] == {"unreadable_image": 1}
    (root / "files/p10/p10000764/s57375967/d-pa-3.jpg").unlink()
    meta = prep.prepare(root, tmp_path / "c", size=S, workers=1, on_error="skip")
    assert meta["counts"]["validate"] == 0
    assert meta["counts"]["skipped"] == {"unreadable_image": 1, "missing_image": 1, "study_without_images": 1}
    assert prep.load_prepared(tmp_path / "c")["validate"].num_rows == 0


def test_stage_and_cli(tree, tmp_path, capsys):
    from kdistill.config import ConfigError, from_dict
    from kdistill.pipeline import RunContext

    cfg = from_dict(prep.PrepareConfig, {"size": S, "workers": 1})
    ctx = RunContext(run_dir=tmp_path / "run", name="t", seed=0, outputs={"data": {"root": str(tree)}})
    result = prep.run_stage(cfg, ctx)
    assert result == {"path": str(tmp_path / "run" / "prepared"),
                      "counts": {"train": 2, "validate": 1, "test": 1, "skipped": {}}}
    assert prep.main([str(tree), "--size", str(S), "--out", str(tmp_path / "cli"), "workers=1"], prog="kdistill data prepare") == 0
    assert "train     2 rows" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="size must be >= 8"):
        prep.main([str(tree), "--size", "4", "--out", str(tmp_path / "x")], prog="kdistill data prepare")


def test_phantom_tree_loads_checks_and_prepares(tmp_path):
    from kdistill.data.check import check_dataset
    from kdistill.data.mimic import load_studies
    from kdistill.data.phantom import PhantomConfig, synthesize

    root = tmp_path / "phantom"
    synthesize(PhantomConfig(n_studies=24, image_size=64, corpus_mb=0.0), root)
    report = check_dataset(root)
    assert report.errors == [], report.errors[:3]
    assert report.counts["studies"] == 24
    studies = load_studies(root)
    assert len(studies) == 24 and all(s.findings or s.impression for s in studies)
    meta = prep.prepare(root, tmp_path / "p", size=32, workers=1)
    assert sum(meta["counts"][s] for s in ("train", "validate", "test")) == 24
    ds = prep.load_prepared(tmp_path / "p")
    with_rois = {s.study_id for s in studies if s.rois}
    for split in ds:
        batch = prep.read_batch(ds[split], slice(0, len(ds[split])), columns=["study_id", "roi_bits", "roi_boxes"])
        for study_id, bits, boxes in zip(batch["study_id"], batch["roi_bits"], batch["roi_boxes"]):
            assert bool(bits.any()) == (study_id in with_rois) == (len(boxes) > 0)


def test_error_in_a_worker_process_reaches_the_caller_named(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / PA1).write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match="d-pa-1.jpg: cannot decode image"):
        prep.prepare(root, tmp_path / "a", size=S, workers=2, shard_size=1)


def test_read_batch_keeps_stored_dtypes(prepared):
    train = prep.load_prepared(prepared[0])["train"]
    batch = prep.read_batch(train, slice(0, 2))
    reference = train.with_format("numpy")[0:2]
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (2, S, S)
    assert batch["roi_bits"].dtype == np.uint16 and batch["labels"].shape == (2, 14)
    np.testing.assert_array_equal(batch["image"], reference["image"])
    np.testing.assert_array_equal(batch["roi_bits"], reference["roi_bits"])
    np.testing.assert_array_equal(batch["labels"], reference["labels"])
    assert batch["study_id"] == ["50414267", "53189527"]
    assert batch["roi_boxes"][0].shape == (2, 5) and batch["roi_boxes"][1].shape == (0, 5)
    picked = prep.read_batch(train.select([1]), [0], columns=["study_id"])
    assert picked == {"study_id": ["53189527"]}


def test_box_beyond_the_image_is_clipped_and_counted(tmp_path):
    root = build_tree(tmp_path / "t")
    with open(root / "rois.jsonl", "a") as fh:  # PA image is 32x40: x beyond 32, y below 0
        fh.write(json.dumps({"study_id": "50414267", "dicom_id": "d-pa-1", "finding": "Edema",
                             "box": [24, -10, 40, 10], "mask": None}) + "\n")
    meta = prep.prepare(root, tmp_path / "p", size=S, workers=1)
    assert meta["counts"]["clipped_rois"] == 1
    row = rows(prep.load_prepared(tmp_path / "p")["train"])["50414267"]
    edema = FINDING_INDEX["Edema"]
    assert [b.tolist() for b in row["roi_boxes"] if b[0] == edema] == [[edema, 12, 0, 16, 4]]
    assert ((row["roi_bits"] >> edema) & 1).sum() == 4 * 4
