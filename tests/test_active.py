"""kdistill student active: each acquisition function on hand-made scores, and the loop (batch
per round, no re-acquisition, budget, seeded random, resume by round, bad input)."""
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill.config import ConfigError, from_dict, to_dict
from kdistill.errors import DataError
from kdistill.labels import NUM_FINDINGS
from student import acquisition as acq
from student import active
from student.active_config import ActiveConfig
from student.config import StudentConfig
from student.pool import Studies
from student.synthetic import TINY_MODEL, make_images, make_labels

torch.set_num_threads(1)
LN2 = math.log(2)


def test_entropy_of_known_probabilities():
    assert acq.binary_entropy(np.array([0.5, 0.0, 1.0])) == pytest.approx([LN2, 0.0, 0.0], abs=1e-9)
    p = 0.1  # -0.1 ln 0.1 - 0.9 ln 0.9
    probs = np.array([[0.5, 1.0], [p, 0.5]])
    want = [LN2 / 2, (-(p * math.log(p) + (1 - p) * math.log(1 - p)) + LN2) / 2]
    assert acq.entropy_scores(probs) == pytest.approx(want)


def test_bald_of_known_mc_samples():
    # study 0: passes disagree completely (0 and 1): H(mean 0.5) - mean(H) = ln 2 - 0
    # study 1: passes agree (0.5 twice): ln 2 - ln 2 = 0, however uncertain each pass is
    # study 2: 0.2 and 0.8: H(0.5) - H(0.2) (H(0.2) = H(0.8))
    samples = np.array([[[0.0], [0.5], [0.2]], [[1.0], [0.5], [0.8]]])  # (T=2, P=3, F=1)
    h02 = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert acq.bald_scores(samples) == pytest.approx([LN2, 0.0, LN2 - h02], abs=1e-9)


def test_rank_normalisation():
    assert acq.rank_normalise(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert acq.rank_normalise(np.array([5.0, 5.0, 9.0])).tolist() == [0.25, 0.25, 1.0]  # ties: mean rank 1.5
    assert acq.rank_normalise(np.array([1e9, -1e-9, 7.0, 0.0])).tolist() == pytest.approx([1, 0, 2 / 3, 1 / 3])
    assert acq.rank_normalise(np.array([4.0])).tolist() == [0.5]


def test_xgal_mixes_rank_normalised_scores():
    unc = np.array([0.1, 0.9, 0.5])  # ranks 0, 1, 0.5
    mis = np.array([1.0, 0.0, 0.5])  # already ranks
    assert acq.xgal_scores(unc, mis, 0.25).tolist() == pytest.approx([0.75, 0.25, 0.5])
    assert acq.xgal_scores(unc, mis, 1.0).tolist() == pytest.approx([0, 1, 0.5])
    assert acq.xgal_scores(unc, mis, 0.0).tolist() == pytest.approx([1, 0, 0.5])


def test_misalignment_from_dice_and_its_fallback_without_regions():
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4))
    maps[0, :2], masks[0, :2] = 1, 1  # the map on the region: Dice 1
    maps[1, :2], masks[1, 2:] = 1, 1  # the map beside it: Dice ~0
    assert acq.soft_dice(maps, masks) == pytest.approx([1.0, 0.0], abs=1e-6)
    mis = np.array([0.2, 0.0, 0.9, 0.0])
    has = np.array([True, False, True, False])
    entropy = np.array([0.0, 0.3, 0.0, 0.1])  # ranks among all: 0.1667, 1, 0.1667, 0.6667
    got = acq.misalignment_ranks(mis, has, entropy)
    assert got.tolist() == pytest.approx([0.0, 1.0, 1.0, 2 / 3])
    assert acq.misalignment_ranks(mis, np.zeros(4, bool), entropy).tolist() == pytest.approx(
        acq.rank_normalise(entropy).tolist())


def test_select_top_takes_the_highest_with_seeded_ties():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    assert sorted(acq.select_top(scores, 3, np.random.default_rng(0)).tolist()) == [1, 2, 3]
    firsts = {int(acq.select_top(scores, 1, np.random.default_rng(s))[0]) for s in range(20)}
    assert firsts == {1, 3}  # the tie is broken both ways, by the seed only
    a = acq.select_top(scores, 2, np.random.default_rng(4)).tolist()
    assert a == acq.select_top(scores, 2, np.random.default_rng(4)).tolist()


def test_config_round_trips_through_json():
    cfg = ActiveConfig(model=StudentConfig(**TINY_MODEL), strategies=["random", "xgal"], budget=7, warm_start=False,
                       xgal_lambda=0.3, num_threads=1, seed=4)
    assert from_dict(ActiveConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(ConfigError, match="unknown strategies"):
        from_dict(ActiveConfig, {"strategies": ["bald"]})
    with pytest.raises(ConfigError, match="xgal_lambda"):
        from_dict(ActiveConfig, {"xgal_lambda": 1.5})


def _studies(n, seed, regions=True, size=32):
    """Synthetic studies: a bright square per positive finding at its own place; the square is
    that finding's expert region (``regions``)."""
    labels = make_labels(n, seed)
    images = make_images(labels, size, seed)
    bits = np.zeros((n, size, size), np.uint16)
    if regions:
        step = size // 4
        for i in range(n):
            for f in range(NUM_FINDINGS):
                if labels[i, f] == 1:
                    r, c = divmod(f, 4)
                    bits[i, r * step:(r + 1) * step, c * step:(c + 1) * step] |= 1 << f
    imgs = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    return Studies([f"s{seed}_{i}" for i in range(n)], imgs, labels, bits, ["x"] * n)


def _cfg(**kw):
    base = dict(model=StudentConfig(**TINY_MODEL), seed_size=6, acquire=4, budget=10, max_steps=2, batch_size=4,
                mc_passes=3, num_threads=1)
    return ActiveConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return _studies(30, 0), _studies(16, 1)


def _acquired(state):
    return [r["acquired"] for r in state["rounds"]]


@pytest.mark.parametrize("strategy", ["random", "entropy", "mc_dropout", "misalignment", "xgal"])
def test_loop_acquires_a_batch_per_round_never_twice_and_stops_at_budget(strategy, data, tmp_path):
    pool, test = data
    cfg = _cfg()
    state = active.run_one(cfg, strategy, 0, pool, test, tmp_path / strategy)
    acquired = _acquired(state)
    assert [len(a) for a in acquired] == [4, 4, 2, 0]  # budget 10 = 4 + 4 + 2; the last round only records
    assert [r["labelled"] for r in state["rounds"]] == [6, 10, 14, 16]
    seed_set = state["labelled"][:6]
    every = seed_set + [s for a in acquired for s in a]
    assert len(set(every)) == len(every) == 16 and set(every) <= set(pool.study_id)
    assert all(0.0 <= r[active.METRIC] <= 1.0 for r in state["rounds"])


def test_random_with_a_seed_is_reproducible_and_seeds_differ(data, tmp_path):
    pool, test = data
    a = active.run_one(_cfg(), "random", 3, pool, test, tmp_path / "a")
    b = active.run_one(_cfg(), "random", 3, pool, test, tmp_path / "b")
    c = active.run_one(_cfg(), "random", 4, pool, test, tmp_path / "c")
    strip = lambda s: [{k: v for k, v in r.items() if k != "wall_s"} for r in s["rounds"]]
    assert a["labelled"] == b["labelled"] and strip(a) == strip(b)
    assert [r[active.METRIC] for r in a["rounds"]] == [r[active.METRIC] for r in b["rounds"]]
    assert a["labelled"] != c["labelled"]


@pytest.mark.parametrize("warm", [True, False])
def test_resume_by_round_gives_the_uninterrupted_acquisitions(data, tmp_path, warm):
    pool, test = data
    cfg = _cfg(warm_start=warm)
    whole = active.run_one(cfg, "xgal", 0, pool, test, tmp_path / "whole")
    part = active.run_one(cfg, "xgal", 0, pool, test, tmp_path / "cut", stop_after=2)  # killed after round 1
    assert len(part["rounds"]) == 2
    resumed = active.run_one(cfg, "xgal", 0, pool, test, tmp_path / "cut")
    assert _acquired(resumed) == _acquired(whole)
    assert [r[active.METRIC] for r in resumed["rounds"]] == [r[active.METRIC] for r in whole["rounds"]]
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["state.json", "weights_round3.pt"]
    # another config does not resume from this state
    other = active.run_one(_cfg(warm_start=warm, budget=4), "xgal", 0, pool, test, tmp_path / "cut")
    assert [len(a) for a in _acquired(other)] == [4, 0]


def test_budget_larger_than_the_pool_stops_at_the_pool(data, tmp_path, caplog):
    pool, test = data
    small = pool.subset(range(12))
    with caplog.at_level(logging.WARNING, logger="kdistill.student.active"):
        state = active.run_one(_cfg(budget=50), "entropy", 0, small, test, tmp_path / "r")
    assert state["stopped_at_pool"] and "larger than the pool" in caplog.text
    assert [len(a) for a in _acquired(state)] == [4, 2, 0] and len(state["labelled"]) == 12


def test_empty_pool_is_an_error(data, tmp_path):
    pool, test = data
    with pytest.raises(DataError, match="no pool is left after a seed set of 6"):
        active.run_one(_cfg(), "random", 0, pool.subset(range(6)), test, tmp_path / "r")


def test_pool_without_regions_falls_back_said_once(tmp_path, caplog):
    pool, test = _studies(24, 2, regions=False), _studies(12, 3)
    with caplog.at_level(logging.WARNING, logger="kdistill.student.active"):
        mis = active.run_one(_cfg(), "misalignment", 0, pool, test, tmp_path / "m")
    ent = active.run_one(_cfg(), "entropy", 0, pool, test, tmp_path / "e")
    assert caplog.text.count("no expert region") == 1 and "ranks by entropy alone" in caplog.text
    assert _acquired(mis) == _acquired(ent)  # without regions, misalignment is entropy


def test_student_maps_are_gradcams_and_misalignment_follows_them(monkeypatch, data):
    from kdistill.saliency import GradCAM
    from kdistill.saliency.regions import region_masks
    from student.model import create_student

    pool, _ = data
    torch.manual_seed(0)
    model = create_student(StudentConfig(**TINY_MODEL))
    images = pool.images[:5]
    got = active.grad_cam_maps(model, images, [2, 7])
    for n, j in enumerate([2, 7]):  # the reference: GradCAM.from_model, one finding at a time
        assert torch.allclose(got[:, n], GradCAM.from_model(model).attribute(images, j), atol=1e-5)

    # Maps replaced by the regions themselves: misalignment 0 where a study has a region, NaN
    # where it has none; maps of the regions' complement: misalignment 1.
    rows = np.arange(len(pool))
    for invert, want in ((False, 0.0), (True, 1.0)):
        def oracle(model, imgs, findings, invert=invert):
            keep = [i for i in rows if any(torch.equal(pool.images[i], im) for im in imgs)]
            m = region_masks(pool.roi_bits[keep], (32, 32))[0][:, findings]
            return 1 - m if invert else m

        monkeypatch.setattr(active, "grad_cam_maps", oracle)
        got = active.misalignment(None, pool, rows)
        has = pool.has_region
        assert has.sum() > 10 and (~has).sum() > 0
        assert np.isnan(got[~has]).all() and got[has] == pytest.approx(np.full(has.sum(), want), abs=1e-6)


def test_command_writes_the_curve(data, tmp_path):
    from kdistill.cli import main
    from kdistill.data.phantom import PhantomConfig, synthesize
    from kdistill.data.prepare import prepare

    synthesize(PhantomConfig(n_studies=60, image_size=64, corpus_mb=0.0), tmp_path / "phantom")
    prepare(tmp_path / "phantom", tmp_path / "prepared", size=32, workers=1)
    model_keys = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    out = tmp_path / "out"
    assert main(["student", "active", "--prepared", str(tmp_path / "prepared"), "--out", str(out), *model_keys,
                 "strategies=[random,xgal]", "repeats=2", "seed_size=8", "acquire=5", "budget=10", "max_steps=2",
                 "batch_size=4", "num_threads=1"]) == 0
    lines = (out / "curve.csv").read_text().splitlines()
    assert lines[0] == "strategy,seed,round,labelled,test_micro_auc" and len(lines) == 1 + 2 * 2 * 3
    assert {tuple(l.split(",")[:4]) for l in lines[1:]} >= {("xgal", "1", "2", "18"), ("random", "0", "0", "8")}
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acquired = json.loads((out / "acquired.json").read_text())
    assert set(acquired) == {"random_seed0", "random_seed1", "xgal_seed0", "xgal_seed1"}
    assert [len(r) for r in acquired["xgal_seed1"]["rounds"]] == [5, 5, 0]
    assert "| 18 | xgal | 2 |" in (out / "table.md").read_text()


@pytest.mark.slow
def test_kill_9_during_a_round_then_rerun_continues_the_curve(tmp_path):
    """The command killed (SIGKILL) after its first finished round, during the next; the rerun's
    acquisitions and curve are those of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time as _time

    from kdistill.data.phantom import PhantomConfig, synthesize
    from kdistill.data.prepare import prepare

    synthesize(PhantomConfig(n_studies=80, image_size=64, corpus_mb=0.0), tmp_path / "phantom")
    prepare(tmp_path / "phantom", tmp_path / "prepared", size=32, workers=1)
    model_keys = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]

    def cmd(out):
        return [sys.executable, "-c", "from kdistill.cli import main; raise SystemExit(main())", "student", "active",
                "--prepared", str(tmp_path / "prepared"), "--out", str(out), *model_keys, "strategies=[xgal]",
                "seed_size=8", "acquire=6", "budget=18", "max_steps=40", "batch_size=8", "num_threads=1"]

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run(cmd(tmp_path / "whole"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "cut" / "runs" / "xgal_seed0" / "state.json"
    deadline = _time.time() + 120
    while not state.is_file() and _time.time() < deadline and proc.poll() is None:
        _time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(json.loads(state.read_text())["rounds"]) < 4
    subprocess.run(cmd(tmp_path / "cut"), check=True, env=env, capture_output=True)
    for name in ("acquired.json", "curve.csv"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text()
