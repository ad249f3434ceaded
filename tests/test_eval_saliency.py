"""The student's explanations scored by ``kdistill eval`` (eval.student_saliency) and drawn by
``kdistill explain --saliency``: hand-computed scores on tiny arrays, an oracle whose maps are the
regions themselves scoring 1 through the same path eval uses, and the outputs of eval and
explain on a tiny trained checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval.saliency import dice_iou, energy_pointing_game, pointing_game
from eval.student_saliency import GALLERY, SaliencyEvalConfig, region_pairs, score_student_saliency
from kdistill.labels import FINDING_INDEX, FINDINGS, NUM_FINDINGS
from saliency_support import CELLS, cell_bits, trained_checkpoint, with_regions

SIZE = 32


def test_pointing_energy_and_dice_by_hand():
    # a 4x4 map with its peak inside a 2x2 region; mass 1+2+3+4 inside of 10+6 = 16 in all
    m = np.zeros((1, 4, 4))
    m[0, 0, :2] = [1, 2]
    m[0, 1, :2] = [3, 4]
    m[0, 3, 3] = 6
    region = np.zeros((1, 4, 4), bool)
    region[0, :2, :2] = True
    assert pointing_game(m, region)[0] == 0.0  # the peak (6) is outside
    m[0, 1, 1] = 7  # now 1+2+3+7 = 13 inside, 19 in all, and the peak inside
    assert pointing_game(m, region)[0] == 1.0
    assert energy_pointing_game(m, region)[0] == pytest.approx(13 / 19)
    # top-k, k = 4 (the region's area): 7, 6, 3, 2 -> 3 of 4 inside: Dice 2*3/(4+4), IoU 3/5
    dice, iou = dice_iou(m, region)
    assert dice[0] == pytest.approx(0.75) and iou[0] == pytest.approx(0.6)
    # a flat map scores chance on both: the region's share 4/16
    flat = np.zeros((1, 4, 4))
    assert pointing_game(flat, region)[0] == energy_pointing_game(flat, region)[0] == 0.25


def test_pairs_are_labelled_positive_findings_with_a_region_round_robin_over_findings():
    labels = np.full((3, NUM_FINDINGS), np.nan)
    labels[0, [1, 2]] = 1.0
    labels[1, 1] = 1.0
    labels[2, 2] = 1.0
    labels[2, 5] = 1.0  # positive but no region: not a pair
    bits = np.zeros((3, 4, 4), np.uint16)
    bits[0, 0, 0] = (1 << 1) | (1 << 2)
    bits[1, 1, 1] = 1 << 1
    bits[2, 2, 2] = (1 << 2) | (1 << 7)  # a region of finding 7, labelled blank: not a pair
    pairs, n_with = region_pairs(labels, bits)
    assert pairs == [(0, 1), (0, 2), (1, 1), (2, 2)] and n_with == 3


class RegionOracle(torch.nn.Module):
    """A 'student' whose class-query map of finding j is exactly j's cell where the image has its
    bright square (make_images: +120 over N(60, 10)), i.e. the expert region itself."""

    image_size = (SIZE, SIZE)

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        step = SIZE // CELLS
        cells = torch.zeros(NUM_FINDINGS, SIZE, SIZE)
        for j in range(NUM_FINDINGS):
            r, c = divmod(j, CELLS)
            cells[j, r * step:(r + 1) * step, c * step:(c + 1) * step] = 1
        self.register_buffer("cells", cells)

    def forward(self, images):
        bright = (images[:, 0] * 255 > 120).float()
        maps = bright[:, None] * self.cells[None] * self.scale
        return {"logits": maps.flatten(2).mean(-1) * 10 - 1, "maps": maps}


def test_a_regions_own_mask_scores_one_through_the_eval_path(tmp_path):
    from eval.references import references_from_prepared
    from student.synthetic import make_prepared

    with_regions(make_prepared(4, 12, size=SIZE), SIZE).save_to_disk(str(tmp_path / "prepared"))
    ref = references_from_prepared(tmp_path / "prepared", "test")
    cfg = SaliencyEvalConfig(methods=["attention"], max_pairs=0, gallery=0)
    found, notes = score_student_saliency(RegionOracle(), ref, cfg)
    n = int(found["saliency/n_pairs_available"])
    assert n == int((ref.labels == 1).sum()) > 5  # every labelled positive has its cell as region
    for metric in ("energy_pointing_game", "pointing_game", "dice", "iou"):
        assert found[f"saliency/attention/{metric}"] == pytest.approx(1.0), metric
    assert found["saliency/attention/leakage_outside"] == pytest.approx(0.0)
    assert found["saliency/attention/chance_energy"] == pytest.approx(1 / CELLS ** 2)  # a cell is 1/16
    assert found["saliency/attention/n_pairs"] == n and "deletion_auc" not in str(found)


def test_a_split_without_regions_is_skipped_by_name(tmp_path):
    from eval.references import references_from_prepared
    from student.synthetic import make_prepared

    make_prepared(4, 4, size=SIZE).save_to_disk(str(tmp_path / "plain"))
    found, _ = score_student_saliency(lambda: pytest.fail("no model needed"),
                                      references_from_prepared(tmp_path / "plain", "test"), SaliencyEvalConfig())
    assert "prepared cache" in found["skipped/saliency"]
    with_regions(make_prepared(4, 4, size=SIZE), SIZE).save_to_disk(str(tmp_path / "regions"))
    ref = references_from_prepared(tmp_path / "regions", "test")
    ref.labels = np.zeros_like(ref.labels)  # regions, but no labelled positive
    found, _ = score_student_saliency(lambda: pytest.fail("no model needed"), ref, SaliencyEvalConfig())
    assert "no study of the split" in found["skipped/saliency"] and found["saliency/n_pairs_available"] == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("trained"), size=SIZE, steps=12, n_train=32)


def test_eval_on_a_tiny_trained_checkpoint_writes_saliency_metrics_table_and_gallery(trained, tmp_path):
    from eval import run as R

    ckpt, prepared = trained
    out = tmp_path / "eval"
    assert R.main(["--checkpoint", str(ckpt), "--prepared", str(prepared), "--out", str(out), "n_bootstrap=5",
                   "noise_sigmas=[]", "saliency.max_pairs=4", "saliency.max_pairs_localisation=24",
                   "saliency.gallery=3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("attention", "gradcam", "fused"):
        p = f"test/saliency/{method}"
        for metric in ("pointing_game", "chance_pointing", "energy_pointing_game", "chance_energy", "dice", "iou",
                       "leakage_outside", "leakage_other", "deletion_auc", "deletion_auc_random", "insertion_auc",
                       "insertion_auc_random", "noise_spearman", "shift_spearman", "randomisation_spearman"):
            assert isinstance(metrics[f"{p}/{metric}"], float), (method, metric)
        assert metrics[f"{p}/chance_energy"] == pytest.approx(1 / 16)
        assert 0 <= metrics[f"{p}/energy_pointing_game"] <= 1 and -1 <= metrics[f"{p}/randomisation_spearman"] <= 1
        assert metrics[f"{p}/n_pairs_costly"] == 4 and metrics[f"{p}/n_pairs"] == 24
        assert metrics[f"{p}/leakage_outside"] == pytest.approx(1 - metrics[f"{p}/energy_pointing_game"])
    assert metrics["test/saliency/n_pairs_available"] > 24
    assert "test/baseline/constant_prevalence/auc_micro_14" in metrics  # the rows already there stay
    # wall times are not metrics (two runs must give the same metrics.json): they are in timing.json
    assert not [k for k in metrics if "seconds" in k]
    timing = json.loads((out / "timing.json").read_text())
    assert sorted(timing) == [f"test/saliency/{m}/seconds_per_map" for m in ("attention", "fused", "gradcam")]
    assert all(v > 0 for v in timing.values())
    summary = (out / "summary.md").read_text()
    assert "## Saliency against expert regions" in summary and "| energy in region (chance) |" in summary
    assert "| metric | attention | gradcam | fused |" in summary
    gallery = np.asarray(Image.open(out / GALLERY))
    assert gallery.shape[:2] == (576, 768)  # 3 rows x 4 panels (image, 3 methods) of 2.4 in at 80 dpi


def test_explain_saliency_gradcam_writes_pages_with_the_figures(trained, tmp_path):
    from kdistill.cli import main

    ckpt, prepared = trained
    out = tmp_path / "explain"
    assert main(["explain", str(ckpt), "--prepared", str(prepared), "--out", str(out), "--saliency", "gradcam",
                 "max_studies=3", "max_new_tokens=2", "deletion_steps=2"]) == 0
    pages = sorted(out.glob("*/explanation.json"))
    assert len(pages) == 3
    seen = set()
    for page in pages:
        record = json.loads(page.read_text())
        assert record["saliency"]["method"] == "gradcam" and record["saliency"]["title"] == "Grad-CAM"
        for row in record["findings"]:
            if row["map"] is None:
                continue
            names = {f["name"] for f in row["map"]["figures"]}
            positive = row["decision"] or row["reference"] == "positive"
            assert bool(names) == positive, row["name"]
            if positive:
                assert "deletion_auc" in names
                assert ("energy_in_region" in names) == row["map"]["region"]
                seen |= names
        html = (page.parent / "study.html").read_text()
        assert "Grad-CAM" in html and ("deletion AUC" in html) == any(
            f["name"] == "deletion_auc" for r in record["findings"] if r["map"] for f in r["map"]["figures"])
    assert seen == {"energy_in_region", "deletion_auc"}  # both figures appear on the pages
