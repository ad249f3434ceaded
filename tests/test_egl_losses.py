"""Explanation-guided learning in the student (issue 15, training side): L_HA, L_DAL and the Grad-CAM
Dice loss against hand-computed values, their gradients, their edge cases, the batch's regions, and
training with them through the student's training entry point (one process, two processes, real NIH
radiographs with expert boxes)."""
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill import config as cfglib
from kdistill.labels import FINDINGS
from student import train as train_mod
from student.losses import LossWeights, dal_loss, egl_pair_counts, gcam_dice_loss, halign_loss, student_loss
from student.synthetic import TINY_MODEL, make_prepared
from student.train import StudentTrainConfig, train

EPS = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- hand-computed values

def test_halign_by_hand_on_a_2x2_map():
    # m = [[.4, .3], [.2, .1]], region = top-left cell. m^ = (m - .1) / .3 = [[1, 2/3], [1/3, 0]]:
    # Dice = 2 * 1 / (2 + 1) = 2/3; mass outside = (.3 + .2 + .1) / 1.0 = 0.6.
    maps = torch.tensor([[0.4, 0.3], [0.2, 0.1]]).reshape(1, 1, 2, 2)
    region = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert float(halign_loss(maps, region, valid, penalty=0.0)) == pytest.approx(1 / 3, abs=1e-5)
    assert float(halign_loss(maps, region, valid, penalty=0.5)) == pytest.approx(1 / 3 + 0.5 * 0.6, abs=1e-5)
    # the region's own mask scores 0: Dice 1, no mass outside
    assert float(halign_loss(region, region, valid, penalty=1.0)) == pytest.approx(0.0, abs=1e-5)
    # the scale of the map does not matter (attention sums to 1, Grad-CAM peaks at 1)
    assert float(halign_loss(maps * 7, region, valid, 0.5)) == pytest.approx(float(halign_loss(maps, region, valid, 0.5)))


def test_halign_averages_over_valid_pairs_only():
    maps = torch.tensor([[0.4, 0.3], [0.2, 0.1]]).reshape(1, 1, 2, 2).repeat(2, 2, 1, 1)
    region = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2).repeat(2, 2, 1, 1)
    region[1, 1] = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # the min cell: Dice 0, outside 1 -> 2.0 at penalty 1
    valid = torch.tensor([[True, False], [False, True]])
    expected = ((1 / 3 + 0.6) + (1 + 0.9)) / 2
    assert float(halign_loss(maps, region, valid, penalty=1.0)) == pytest.approx(expected, abs=1e-5)


def test_dal_by_hand_and_positives_only():
    # maps of one image: a = e1, b = (e1 + e2)/sqrt2 after normalising, c = e3:
    # cos(a,b) = 1/sqrt2, cos(a,c) = cos(b,c) = 0 -> mean over the 3 pairs = 1/(3 sqrt2).
    maps = torch.tensor([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 1.0, 0]]).reshape(1, 3, 2, 2)
    assert float(dal_loss(maps)) == pytest.approx(1 / (3 * math.sqrt(2)), abs=1e-6)
    assert float(dal_loss(maps, torch.tensor([[True, True, False]]))) == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert float(dal_loss(maps, torch.tensor([[True, False, True]]))) == pytest.approx(0.0, abs=1e-7)
    # an image with fewer than two positives is left out of the mean
    two = torch.cat([maps, maps])
    classes = torch.tensor([[True, True, False], [False, False, True]])
    assert float(dal_loss(two, classes)) == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_dal_gram_form_equals_the_pairwise_loop():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 14, 4, 4, generator=g)
    classes = torch.rand(3, 14, generator=g) > 0.5
    classes[2] = False
    classes[2, 3] = True  # one positive: left out
    for sel in (None, classes):
        per_image = []
        for b in range(3):
            idx = list(range(14)) if sel is None else sel[b].nonzero().flatten().tolist()
            if len(idx) < 2:
                continue
            sims = [torch.nn.functional.cosine_similarity(maps[b, i].flatten(), maps[b, j].flatten(), dim=0)
                    for i in idx for j in idx if i != j]
            per_image.append(torch.stack(sims).mean())
        assert float(dal_loss(maps, sel)) == pytest.approx(float(torch.stack(per_image).mean()), abs=1e-6)


def test_gcam_dice_by_hand():
    # logit = sum(A): the gradient is 1 everywhere, channel weight 1, CAM = ReLU(A) = A,
    # normalised (A - 1) / 3 = [[1, 2/3], [1/3, 0]]; region top-left: Dice 2/3, loss 1/3.
    feats = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).reshape(1, 1, 2, 2).requires_grad_(True)
    logits = feats.sum((2, 3))  # (1, 1)
    region = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    loss = gcam_dice_loss(feats, logits, region, torch.ones(1, 1, dtype=torch.bool))
    assert float(loss) == pytest.approx(1 / 3, abs=1e-5)


def test_gcam_dice_sampled_findings_by_hand():
    # Channel c's sum is finding c's logit, so finding c's Grad-CAM is ReLU(A_c) = A_c. Both channels
    # [[4, 3], [2, 1]], normalised [[1, 2/3], [1/3, 0]]: finding 0's region top-left, Dice 2/3, loss
    # D0 = 1/3; finding 1's bottom-right (the map's 0 there), Dice 0, loss D1 = 1. Study 0 has both
    # pairs, study 1 finding 0 only: n0 = 2, n1 = 1, P = 3, full loss (2/3 + 1) / 3 = 5/9. K = 1 of
    # F = 2: finding 0 drawn -> (2/1) * 2 * (1/3) / 3 = 4/9, finding 1 -> 2 * 1 / 3 = 2/3; each drawn with
    # probability 1/2, expectation (4/9 + 2/3) / 2 = 5/9, the full loss.
    a = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    feats = a.expand(2, 2, 2, 2).clone().requires_grad_(True)
    logits = feats.sum((2, 3))  # (2 studies, 2 findings)
    masks = torch.zeros(2, 2, 2, 2)
    masks[:, 0, 0, 0] = 1
    masks[:, 1, 1, 1] = 1
    valid = torch.tensor([[True, True], [True, False]])
    full = float(gcam_dice_loss(feats, logits, masks, valid))
    assert full == pytest.approx(5 / 9, abs=1e-5)
    for k in (2, 5):  # K >= F: every finding, the full loss
        assert float(gcam_dice_loss(feats, logits, masks, valid, findings=k)) == pytest.approx(full, abs=1e-6)
    draws = [float(gcam_dice_loss(feats, logits, masks, valid, findings=1, generator=torch.Generator().manual_seed(s)))
             for s in range(16)]
    outcomes = sorted({round(d, 5) for d in draws})
    assert outcomes == [round(4 / 9, 5), round(2 / 3, 5)]  # both findings get drawn
    assert sum(outcomes) / 2 == pytest.approx(full, abs=1e-5)  # the estimator is unbiased
    loss = gcam_dice_loss(feats, logits, masks, valid, findings=1, generator=torch.Generator().manual_seed(0))
    loss.backward()  # create_graph: the sampled term reaches the features
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_gcam_findings_is_validated():
    with pytest.raises(ValueError, match="gcam_findings"):
        LossWeights(gcam_findings=-1).validate()
    LossWeights(gcam_findings=1).validate()


# ----------------------------------------------------------------------------- gradients, edge cases

def test_gradients_reach_the_maps():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 14, 4, 4, generator=g).requires_grad_(True)
    region = torch.zeros(2, 14, 4, 4)
    region[:, :, :2, :2] = 1
    valid = torch.zeros(2, 14, dtype=torch.bool)
    valid[0, 3] = valid[1, 5] = True
    (halign_loss(maps, region, valid) + dal_loss(maps)).backward()
    assert torch.isfinite(maps.grad).all()
    assert maps.grad[0, 3].abs().sum() > 0 and maps.grad[1, 5].abs().sum() > 0


def test_no_pairs_give_exactly_zero_with_the_graph_kept():
    maps = torch.rand(2, 14, 4, 4).requires_grad_(True)
    none = torch.zeros(2, 14, dtype=torch.bool)
    one_each = torch.zeros(2, 14, dtype=torch.bool)
    one_each[:, 0] = True
    feats = torch.rand(2, 3, 4, 4, requires_grad=True)
    logits = feats.mean((2, 3)).repeat(1, 5)[:, :14]
    for loss in (halign_loss(maps, torch.zeros_like(maps), none), dal_loss(maps, one_each),
                 gcam_dice_loss(feats, logits, torch.zeros(2, 14, 4, 4), none)):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()  # the graph is kept (every DDP process must run a backward)


def test_all_zero_maps_give_finite_values_and_gradients():
    maps = torch.zeros(1, 14, 4, 4, requires_grad=True)
    region = torch.zeros(1, 14, 4, 4)
    region[0, 0, :2, :2] = 1
    valid = torch.zeros(1, 14, dtype=torch.bool)
    valid[0, 0] = True
    ha, dal = halign_loss(maps, region, valid), dal_loss(maps)
    assert float(ha) == pytest.approx(1.0, abs=1e-4) and float(dal) == 0.0  # Dice 0, no mass outside
    (ha + dal).backward()
    assert torch.isfinite(maps.grad).all()
    feats = torch.zeros(1, 2, 4, 4, requires_grad=True)
    logits = feats.sum((1, 2, 3)).reshape(1, 1).repeat(1, 14)
    loss = gcam_dice_loss(feats, logits, region, valid)
    loss.backward()
    assert math.isfinite(float(loss)) and torch.isfinite(feats.grad).all()


def _batch(b=2, grid=(4, 4)):
    targets = torch.zeros(b, 14)
    targets[0, 2] = targets[1, 7] = targets[1, 9] = 1
    has = torch.zeros(b, 14, dtype=torch.bool)
    has[0, 2] = has[1, 7] = True
    has[0, 4] = True  # a region for a finding labelled negative: ignored
    masks = torch.zeros(b, 14, *grid)
    masks[:, :, :2, :2] = 1
    return {"targets": targets, "target_mask": torch.ones(b, 14), "has_region": has, "region_masks": masks}


def test_student_loss_wires_the_terms_and_counts_pairs():
    batch = _batch()
    maps = torch.rand(2, 14, 4, 4)
    w = LossWeights(cls=1, rep=0, kd=0, emb=0, ha=1, dal=0.1, ha_penalty=0.5)
    out = {"logits": torch.zeros(2, 14), "maps": maps}
    total, terms = student_loss(out, batch, w)
    valid = torch.zeros(2, 14, dtype=torch.bool)
    valid[0, 2] = valid[1, 7] = True  # positive with a region; (0, 4) is negative, (1, 9) has no region
    assert float(terms["ha"]) == pytest.approx(float(halign_loss(maps, batch["region_masks"], valid, 0.5)))
    assert float(terms["dal"]) == pytest.approx(float(dal_loss(maps)))
    assert float(total) == pytest.approx(float(terms["cls"] + terms["ha"] + 0.1 * terms["dal"]), rel=1e-6)
    assert egl_pair_counts(batch, w) == {"ha": 2.0, "dal": 2.0}
    pos = LossWeights(cls=0, rep=0, kd=0, emb=0, dal=1, dal_classes="positives")
    assert egl_pair_counts(batch, pos)["dal"] == 1.0  # only image 1 has two positives
    _, t = student_loss(out, batch, pos)
    assert float(t["dal"]) == pytest.approx(float(dal_loss(maps[1:], torch.tensor([[j in (7, 9) for j in range(14)]]))))


def test_weights_are_validated():
    for bad in ({"ha": -1}, {"dal": float("nan")}, {"gcam_dice": -0.1}, {"ha_penalty": -1}, {"dal_classes": "some"}):
        with pytest.raises((ValueError, cfglib.ConfigError)):
            cfglib.from_dict(LossWeights, bad).validate()
    assert LossWeights().terms()["ha"] == 0 and not LossWeights().needs_regions


def test_gcam_dice_trains_the_tower_of_a_real_tiny_student():
    from student.model import create_student
    from student.config import StudentConfig

    torch.manual_seed(0)
    model = create_student(cfglib.from_dict(StudentConfig, TINY_MODEL))
    images = torch.rand(2, 1, 32, 32)
    out = model(images, with_features=True)
    assert out["cam_features"].features.requires_grad
    batch = _batch(grid=model.grid)
    w = LossWeights(cls=0, rep=0, kd=0, emb=0, gcam_dice=1)
    loss, terms = student_loss(out, batch, w)
    assert 0 < float(terms["gcam_dice"]) <= 1
    loss.backward()
    tower = [p.grad for p in model.visual.parameters() if p.grad is not None]
    assert tower and sum(float(g.abs().sum()) for g in tower) > 0
    # L_HA trains the finding heads' attention (the maps come from the query decoder)
    model.zero_grad()
    out = model(images)
    student_loss(out, batch, LossWeights(cls=0, rep=0, kd=0, emb=0, ha=1))[0].backward()
    assert float(model.heads.queries.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- the batch's regions

def test_dataset_reads_regions_at_the_map_grid_counts_negatives_and_names_missing_findings(caplog):
    from student.data import Collate, StudyDataset

    prep = make_prepared(12, 4, size=32, rois=True)
    split = prep["train"]
    bits = np.asarray(split["roi_bits"], dtype=np.uint16)
    labels = np.asarray(split["labels"], dtype=np.float32)
    fid = FINDINGS.index("Pneumothorax")
    bits &= np.uint16(~(1 << fid) & 0xFFFF)  # no Pneumothorax region anywhere
    neg = int(np.nonzero(labels[:, 0] == 0)[0][0])
    bits[neg, :4, :4] |= np.uint16(1)  # a region for a finding labelled negative
    split = split.remove_columns("roi_bits").add_column("roi_bits", [b.astype(np.int64).tolist() for b in bits])
    ds = StudyDataset(split, None, split_name="train")
    with caplog.at_level(logging.INFO):
        report = ds.attach_regions((4, 4))
    assert report["findings_without_regions"].count("Pneumothorax") == 1
    assert sum("Pneumothorax" in r.getMessage() for r in caplog.records) == 1
    has_bits = ((bits[:, None] >> np.arange(14)[None, :, None, None]) & 1).any((2, 3))
    positive = (ds.targets == 1) & (ds.target_mask > 0)
    assert report["regions_not_positive_ignored"] == int((has_bits & ~positive).sum()) >= 1
    batch = Collate(None, (32, 32), 8, False, (4, 4))([ds[i] for i in range(len(ds))])
    assert batch["region_masks"].shape == (12, 14, 4, 4) and batch["has_region"].dtype == torch.bool
    # area pooling: a positive finding's 8x8 square covers exactly one 8x8 cell of the 4x4 grid
    i, f = map(int, np.argwhere(positive & has_bits & (np.arange(14) != 0))[0])
    r, c = divmod(f, 4)
    assert float(batch["region_masks"][i, f, r, c]) == 1.0 and float(batch["region_masks"][i, f].sum()) == 1.0
    assert not bool(batch["has_region"][:, fid].any())


def _cfg(**kw):
    base = {"model": TINY_MODEL, "batch_size": 8, "max_steps": 4, "eval_every": 2, "save_every": 0,
            "warmup_steps": 1, "log_every": 1, "cpu": True, "lr": 3e-3, "num_threads": 1,
            "loss": {"rep": 0, "kd": 0, "emb": 0}}
    return cfglib.from_dict(StudentTrainConfig, cfglib.merge(base, kw))


def test_egl_terms_train_a_tiny_student_from_the_command_line(tmp_path):
    import csv

    prep = make_prepared(16, 8, size=32, rois=True)
    prep.save_to_disk(str(tmp_path / "prepared" / "dataset"))
    cfg_yaml = tmp_path / "student.yaml"
    cfg_yaml.write_text(json.dumps({"student": {"model": TINY_MODEL, "batch_size": 8, "max_steps": 8, "eval_every": 4,
                                                "log_every": 1, "warmup_steps": 1, "lr": 3e-3, "cpu": True,
                                                "num_threads": 1, "save_every": 0}}))
    rc = train_mod.main(["--prepared", str(tmp_path / "prepared"), "--out", str(tmp_path / "out"),
                         "--config", str(cfg_yaml), "loss.rep=0", "loss.kd=0", "loss.emb=0",
                         "loss.ha=1", "loss.dal=0.1", "loss.gcam_dice=0.5"])
    assert rc == 0
    saved = json.loads((tmp_path / "out" / "training_config.json").read_text())["loss"]
    assert (saved["ha"], saved["dal"], saved["gcam_dice"]) == (1.0, 0.1, 0.5)
    with (tmp_path / "out" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for term in ("ha", "dal", "gcam_dice"):
        values = [float(r[term]) for r in rows]
        assert all(math.isfinite(v) for v in values) and max(values) > 0, term
    assert float(rows[-1]["ha"]) < float(rows[0]["ha"])  # the alignment loss moves the maps
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 8


def test_without_region_losses_the_batch_carries_no_regions(tmp_path):
    from student.data import Collate, StudyDataset

    prep = make_prepared(8, 4, size=32, rois=True)
    ds = StudyDataset(prep["train"], None)
    assert "region_masks" not in Collate(None, (32, 32), 8, False)([ds[0], ds[1]])


# ----------------------------------------------------------------------------- two processes

_LAUNCHED = r'''
import json, os, sys
import datasets, torch
from kdistill import config as cfglib
from student.train import StudentTrainConfig, train
data, out, cfg_json = sys.argv[1:4]
torch.set_num_threads(1)
cfg = cfglib.from_dict(StudentTrainConfig, json.loads(cfg_json))
metrics = train(cfg, out, datasets.load_from_disk(data), None, None)
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as fh:
    json.dump({"steps": metrics["steps"], "num_processes": metrics["num_processes"]}, fh)
'''


@pytest.mark.slow
def test_two_processes_with_the_egl_terms_equal_one_process(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    prep = make_prepared(16, 8, size=32, rois=True)
    prep.save_to_disk(str(tmp_path / "data"))
    (tmp_path / "launched.py").write_text(_LAUNCHED)
    common = {"model": TINY_MODEL, "max_steps": 3, "eval_every": 3, "save_every": 3, "warmup_steps": 1,
              "cpu": True, "lr": 3e-3, "uncertain": "zeros", "blank": "zeros",
              "loss": {"rep": 0, "kd": 0, "emb": 0, "ha": 1, "dal": 0.1, "gcam_dice": 0.5}}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(tmp_path / "launched.py"), str(tmp_path / "data"),
           str(tmp_path / "ddp"), json.dumps({**common, "batch_size": 4})]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["num_processes"] == 2 and r["steps"] == 3 for r in ranks)
    train(cfglib.from_dict(StudentTrainConfig, {**common, "batch_size": 8}), tmp_path / "one", prep, None, None)
    w2 = load_file(str(tmp_path / "ddp" / "checkpoints" / "step_3" / "model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "step_3" / "model.safetensors"))
    train(cfglib.from_dict(StudentTrainConfig, {**common, "batch_size": 4}), tmp_path / "half", prep, None, None)
    wh = load_file(str(tmp_path / "half" / "checkpoints" / "step_3" / "model.safetensors"))
    gap = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    control = max(float((w1[k] - wh[k]).abs().max()) for k in w1)
    assert gap < 2e-4, gap
    assert control > 10 * gap and control > 1e-3, (control, gap)


# ----------------------------------------------------------------------------- real radiographs

def _nih_64() -> Path | None:
    from fixtures.realdata import find_realdata

    root = find_realdata("nih_64/labels.csv")
    return None if root is None else root / "nih_64"


def _energy_in_region(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> float:
    m, r = maps[valid].flatten(1), masks[valid].flatten(1)
    return float(((m * r).sum(-1) / m.sum(-1).clamp_min(1e-12)).mean())


def test_ha_on_real_nih_radiographs_moves_the_maps_into_the_expert_boxes(tmp_path):
    """NIH ChestX-ray14 thumbnails with NIH / ChestX-Det expert boxes: a few steps of L_HA lower it,
    and the class maps' energy inside the boxes of the training studies rises above the untrained
    student's."""
    root = _nih_64()
    if root is None:
        pytest.skip("shared/realdata/nih_64 not found beside the checkout")
    from kdistill.data.prepare import load_prepared, prepare
    from student.data import Collate, StudyDataset
    from student import load

    prepare(root, tmp_path / "prepared", size=64, source="nih", views=None)
    data = load_prepared(tmp_path / "prepared")
    model_cfg = {"vision_model": "kdistill-vit-tiny", "vision_overrides": {"image_size": 64, "patch_size": 8,
                 "width": 32, "head_width": 16, "layers": 1}, "head_width": 32, "head_heads": 2, "head_layers": 1}
    # train on the boxed studies only: L_HA has pairs in every batch
    train_split = data["train"]
    bits = np.asarray(train_split["roi_bits"])
    boxed = [i for i in range(len(train_split)) if bits[i].any()]
    data["train"] = train_split.select(boxed)
    cfg = _cfg(model=model_cfg, max_steps=20, eval_every=20, batch_size=16, lr=2e-3,
               loss={"cls": 1, "ha": 1, "ha_penalty": 1.0})
    train(cfg, tmp_path / "student", data, None, None)
    import csv

    with (tmp_path / "student" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert float(np.mean([float(r["ha"]) for r in rows[-5:]])) < float(np.mean([float(r["ha"]) for r in rows[:5]]))

    ds = StudyDataset(data["train"], None, split_name="train")
    trained = load(tmp_path / "student")
    ds.attach_regions(trained.grid)
    batch = Collate(None, trained.image_size, 8, False, trained.grid)([ds[i] for i in range(len(ds))])
    valid = batch["has_region"] & (batch["targets"] == 1)
    assert int(valid.sum()) >= 20
    from student.model import create_student

    torch.manual_seed(0)
    fresh = create_student(trained.cfg).eval()
    with torch.no_grad():
        e_trained = _energy_in_region(trained.eval()(batch["images"])["maps"], batch["region_masks"], valid)
        e_fresh = _energy_in_region(fresh(batch["images"])["maps"], batch["region_masks"], valid)
    assert e_trained > e_fresh, (e_trained, e_fresh)
