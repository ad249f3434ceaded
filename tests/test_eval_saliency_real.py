"""The student's saliency scored against real expert boxes: the 996 NIH thumbnails of
../shared/realdata/nih_64 (NIH BBox_List and ChestX-Det boxes in the 64x64 frame), prepared,
a tiny student trained a few steps, ``kdistill eval`` with the saliency section: the pairs it
scores are exactly the test studies' labelled-positive findings that have a box."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.realdata import find_realdata
from kdistill import config as cfglib
from kdistill.labels import FINDING_INDEX


REAL = find_realdata("nih_64/labels.csv")
pytestmark = pytest.mark.skipif(REAL is None, reason="../shared/realdata/nih_64 not found")

TOWER = {"vision_model": "kdistill-vit-tiny", "head_width": 32, "head_heads": 2, "head_layers": 1,
         "vision_overrides": {"image_size": 64, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1}}


def test_eval_scores_the_maps_against_the_real_nih_and_chestx_det_boxes(tmp_path):
    from eval import run as R
    from kdistill.data.prepare import load_prepared, prepare
    from kdistill.data.sources import open_source
    from student.train import StudentTrainConfig, train

    torch.set_num_threads(1)
    root = REAL / "nih_64"
    prepare(root, tmp_path / "prepared", size=64, source="nih", views=None, workers=1)
    cfg = cfglib.from_dict(StudentTrainConfig, {
        "model": TOWER, "loss": {"rep": 0, "kd": 0, "emb": 0}, "batch_size": 32, "max_steps": 10, "eval_every": 10,
        "save_every": 0, "warmup_steps": 2, "log_every": 10, "lr": 3e-3, "cpu": True, "num_threads": 1})
    train(cfg, tmp_path / "student", load_prepared(tmp_path / "prepared"), None)
    out = tmp_path / "eval"
    assert R.main(["--checkpoint", str(tmp_path / "student"), "--prepared", str(tmp_path / "prepared"), "--out",
                   str(out), "n_bootstrap=5", "noise_sigmas=[]", "saliency.max_pairs=4", "saliency.gallery=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())

    # independently: test studies x findings labelled 1 that have a box of that finding
    studies = open_source("nih", root).load_studies(splits=["test"], views=None, check_images=False)
    expected = sum(1 for s in studies for f in {r.finding for r in s.rois} if s.labels[FINDING_INDEX[f]] == 1)
    with_box = sum(1 for s in studies if s.rois)
    assert expected > 5
    assert metrics["test/saliency/n_pairs_available"] == expected
    assert metrics["test/saliency/n_studies_with_regions"] == with_box
    for method in ("attention", "gradcam", "fused"):
        p = f"test/saliency/{method}"
        assert metrics[f"{p}/n_pairs"] == expected and metrics[f"{p}/n_pairs_costly"] == 4
        assert 0 < metrics[f"{p}/chance_energy"] < 0.5  # the boxes' mean share of a 64x64 image
        assert 0 <= metrics[f"{p}/energy_pointing_game"] <= 1
        assert np.isfinite(metrics[f"{p}/deletion_auc"]) and np.isfinite(metrics[f"{p}/randomisation_spearman"])
    assert (out / "saliency_gallery.png").is_file()
