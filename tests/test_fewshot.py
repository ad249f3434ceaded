"""kdistill student fewshot: episodes, the prototypical head, the interval, the Grad-CAM Dice
term, and the command end to end on the phantom."""
import json

import numpy as np
import pytest
import torch

from kdistill.config import ConfigError, from_dict, to_dict
from kdistill.labels import FINDING_INDEX, NUM_FINDINGS
from student import fewshot as fs
from student.config import StudentConfig
from student.fewshot_config import FewShotConfig
from student.pool import Studies
from student.synthetic import TINY_MODEL

torch.set_num_threads(1)


def _labels(rows):
    """rows: list of lists of positive finding names -> (n, 14) labels (others 0)."""
    out = np.zeros((len(rows), NUM_FINDINGS), np.float32)
    for i, names in enumerate(rows):
        for name in names:
            out[i, FINDING_INDEX[name]] = 1
    return out


def test_class_pools_keep_studies_with_exactly_one_positive_in_the_set():
    labels = _labels([["Edema"], ["Edema", "Pneumonia"], ["Pneumonia"], [], ["Edema", "No Finding"], ["Fracture"]])
    labels[3, FINDING_INDEX["Edema"]] = np.nan  # blank is not positive
    labels[5, FINDING_INDEX["Pneumonia"]] = -1  # uncertain is not positive
    pools = fs.class_pools(labels, ["Edema", "Pneumonia", "Fracture"])
    assert {k: v.tolist() for k, v in pools.items()} == {"Edema": [0, 4], "Pneumonia": [2], "Fracture": [5]}
    # "No Finding" inside the set makes study 4 a two-positive study; Pneumonia outside it leaves study 1 one
    assert fs.class_pools(labels, ["Edema", "No Finding"])["Edema"].tolist() == [0, 1]


def _pools():
    return {"A": np.arange(0, 10), "B": np.arange(10, 30), "C": np.arange(30, 38), "D": np.arange(38, 41)}


def test_episodes_are_class_balanced_distinct_and_from_their_class():
    pools, seen = _pools(), {}
    for i in range(300):
        classes, support, query = fs.sample_episode(pools, 3, 2, 3, fs.episode_rng(5, 0, i))
        assert support.shape == (3, 2) and query.shape == (3, 3) and len(set(classes)) == 3
        rows = np.concatenate([support.ravel(), query.ravel()])
        assert len(set(rows.tolist())) == 15  # no study twice in an episode
        for c, name in enumerate(classes):
            assert set(support[c]) | set(query[c]) <= set(pools[name].tolist())
            seen[name] = seen.get(name, 0) + 1
    # D has 3 studies < K + Q = 5: never chosen; A, B, C each in every episode (3 of 3 eligible)
    assert seen == {"A": 300, "B": 300, "C": 300}
    counts = {}
    for i in range(600):
        for name in fs.sample_episode(pools, 2, 1, 1, fs.episode_rng(0, 1, i))[0]:
            counts[name] = counts.get(name, 0) + 1
    # 2 of 4 eligible classes per episode: each expected 600 * 2/4 = 300 times (sd ~12)
    assert set(counts) == {"A", "B", "C", "D"} and all(250 < v < 350 for v in counts.values()), counts


def test_episodes_are_reproducible_for_a_seed():
    pools = _pools()
    a = [fs.sample_episode(pools, 2, 3, 2, fs.episode_rng(7, 1, 2, 3, i)) for i in range(20)]
    b = [fs.sample_episode(pools, 2, 3, 2, fs.episode_rng(7, 1, 2, 3, i)) for i in range(20)]
    c = [fs.sample_episode(pools, 2, 3, 2, fs.episode_rng(8, 1, 2, 3, i)) for i in range(20)]
    same = all(x[0] == y[0] and (x[1] == y[1]).all() and (x[2] == y[2]).all() for x, y in zip(a, b))
    differ = any(x[0] != y[0] or not np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    assert same and differ


def test_too_few_qualifying_classes_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"needs 4 findings with at least 5 .* 3 qualify"):
        fs.sample_episode(_pools(), 4, 2, 3, fs.episode_rng(0, 0, 0))
    with pytest.raises(ConfigError, match=r"at least 25 .* 0 qualify .*B: 20"):  # K larger than every class
        fs.sample_episode(_pools(), 2, 20, 5, fs.episode_rng(0, 0, 0))


def test_prototypes_are_the_support_means_and_logits_minus_squared_distances():
    support = torch.tensor([[[0.0, 0.0], [2.0, 4.0]], [[4.0, 0.0], [6.0, 2.0]]])  # (N=2, K=2, C=2)
    protos = fs.prototypes(support)
    assert torch.equal(protos, torch.tensor([[1.0, 2.0], [5.0, 1.0]]))
    q = torch.tensor([[1.0, 1.0], [5.0, 3.0]])
    # |(1,1)-(1,2)|^2 = 1, |(1,1)-(5,1)|^2 = 16; |(5,3)-(1,2)|^2 = 17, |(5,3)-(5,1)|^2 = 4
    assert torch.equal(fs.proto_logits(q, protos), torch.tensor([[-1.0, -16.0], [-17.0, -4.0]]))


def test_separable_episode_has_accuracy_one_and_a_confused_one_chance():
    rng = np.random.default_rng(0)
    emb = torch.tensor(np.concatenate([rng.normal(10 * c, 0.1, size=(6, 4)) for c in range(3)]), dtype=torch.float32)
    support = np.array([[0, 1], [6, 7], [12, 13]])
    query = np.array([[2, 3, 4, 5], [8, 9, 10, 11], [14, 15, 16, 17]])
    assert fs.episode_accuracy(emb, support, query) == 1.0
    same = torch.zeros(18, 4)  # every study identical: argmax picks class 0 for all queries -> 1/3
    assert fs.episode_accuracy(same, support, query) == pytest.approx(1 / 3)


def test_interval_formula():
    r = fs.accuracy_interval(np.array([1.0, 0.0, 1.0, 1.0]))
    # mean 0.75, sd (ddof 1) = sqrt(0.75 / 3) = 0.5, half-width 1.96 * 0.5 / sqrt(4) = 0.49
    assert r["mean_accuracy"] == 0.75 and r["sd"] == pytest.approx(0.5) and r["ci95"] == pytest.approx(0.49)
    assert (r["low"], r["high"]) == (pytest.approx(0.26), pytest.approx(1.24)) and r["episodes"] == 4
    assert fs.accuracy_interval(np.array([0.5]))["ci95"] == 0.0


def test_config_round_trips_through_json_and_validates():
    cfg = FewShotConfig(model=StudentConfig(**TINY_MODEL), novel=["Edema"], ways=[2], shots=[1, 3], gcam_dice=0.0,
                        max_steps=7, num_threads=1, seed=3)
    back = from_dict(FewShotConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    assert "Edema" not in cfg.base and "No Finding" not in cfg.base and len(cfg.base) == 12
    with pytest.raises(ConfigError, match="novel findings .*Edema.* are not in findings"):
        from_dict(FewShotConfig, {"findings": ["Pneumonia", "Atelectasis"], "novel": ["Edema"]})
    with pytest.raises(ConfigError, match="unknown finding"):
        from_dict(FewShotConfig, {"novel": ["Edemaa"]})


def _region_studies(n_per=4, size=32):
    """Two classes (Edema, Pneumonia), each a bright square at its own place, the square its region."""
    from kdistill.data.images import to_unit_float

    n = 2 * n_per
    rng = np.random.default_rng(0)
    images = rng.normal(60, 10, size=(n, size, size))
    bits = np.zeros((n, size, size), np.uint16)
    labels = np.zeros((n, NUM_FINDINGS), np.float32)
    for i in range(n):
        f = "Edema" if i < n_per else "Pneumonia"
        labels[i, FINDING_INDEX[f]] = 1
        r = slice(0, 16) if i < n_per else slice(16, 32)
        images[i, r, r] += 120
        bits[i, r, r] |= 1 << FINDING_INDEX[f]
    images = torch.from_numpy(to_unit_float(np.clip(images, 0, 255).astype(np.uint8)))[:, None]
    return Studies([str(i) for i in range(n)], images, labels, bits, ["train"] * n)


def test_gcam_dice_term_joins_only_with_a_positive_weight_and_trains_the_tower():
    from student.model import create_student

    torch.manual_seed(0)
    model = create_student(StudentConfig(**TINY_MODEL))
    studies = _region_studies()
    support, query = np.array([[0, 1], [4, 5]]), np.array([[2, 3], [6, 7]])
    classes = ["Edema", "Pneumonia"]
    plain, parts0 = fs.episode_loss(model, studies, classes, support, query, 0.0)
    guided, parts1 = fs.episode_loss(model, studies, classes, support, query, 2.0)
    assert "gcam_dice" not in parts0 and parts1["region_supports"] == 4
    assert 0.0 < parts1["gcam_dice"] <= 1.0
    assert guided.item() == pytest.approx(parts1["ce"] + 2.0 * parts1["gcam_dice"], rel=1e-5)
    assert plain.item() == pytest.approx(parts1["ce"], rel=1e-5)
    model.zero_grad()
    (guided - plain).backward()  # the Dice term alone
    grads = [p.grad for n, p in model.visual.named_parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.fixture(scope="module")
def phantom_prepared(tmp_path_factory):
    from kdistill.data.phantom import PhantomConfig, synthesize
    from kdistill.data.prepare import prepare

    root = tmp_path_factory.mktemp("fewshot")
    synthesize(PhantomConfig(n_studies=400, image_size=64, corpus_mb=0.0), root / "phantom")
    prepare(root / "phantom", root / "prepared", size=32, workers=1)
    return root / "prepared"


def _cli(args):
    from kdistill.cli import main

    return main(["student", "fewshot", *args])


def test_command_end_to_end_from_scratch_and_from_a_checkpoint(phantom_prepared, tmp_path, capsys):
    model_keys = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    common = ["ways=[2]", "shots=[1,2]", "queries=3", "train_shots=2", "eval_episodes=30", "num_threads=1"]
    assert _cli(["--prepared", str(phantom_prepared), "--out", str(tmp_path / "a"), *model_keys, *common,
                 "max_steps=3"]) == 0
    out = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [(r["ways"], r["shots"], r["episodes"]) for r in out["results"]] == [(2, 1, 30), (2, 2, 30)]
    assert out["training"]["steps"] == 3 and out["training"]["region_supports_per_episode"] > 0
    assert all(0 <= r["mean_accuracy"] <= 1 and r["low"] <= r["mean_accuracy"] <= r["high"] for r in out["results"])
    assert "| 2 | 1 | 30 |" in (tmp_path / "a" / "results.md").read_text()

    # From a checkpoint with no training: the accuracy is that of the checkpoint's own tower.
    from student.checkpoint import save_weights
    from student.model import create_student
    from student.pool import load_studies

    torch.manual_seed(1)
    model = create_student(StudentConfig(**TINY_MODEL))
    save_weights(model.cfg, model.state_dict(), tmp_path / "ckpt")
    assert _cli(["--prepared", str(phantom_prepared), "--checkpoint", str(tmp_path / "ckpt"), "--out",
                 str(tmp_path / "b"), *common, "max_steps=0"]) == 0
    got = json.loads((tmp_path / "b" / "results.json").read_text())["results"]
    cfg = from_dict(FewShotConfig, {"ways": [2], "shots": [1, 2], "queries": 3, "eval_episodes": 30})
    want = fs.evaluate(model, load_studies(phantom_prepared, cfg.splits, model.image_size), cfg)
    assert [r["mean_accuracy"] for r in got] == [r["mean_accuracy"] for r in want]

    # N larger than the findings that qualify: one line naming how many do.
    assert _cli(["--prepared", str(phantom_prepared), "--out", str(tmp_path / "c"), *model_keys, *common,
                 "ways=[3]", "shots=[40]"]) == 1
    assert "0 qualify" in capsys.readouterr().err


def test_command_reads_its_config_section(phantom_prepared, tmp_path):
    import yaml

    cfg = {"fewshot": {"model": TINY_MODEL, "prepared": str(phantom_prepared), "ways": [2], "shots": [1],
                       "queries": 2, "train_shots": 1, "max_steps": 1, "eval_episodes": 4, "gcam_dice": 0.0,
                       "num_threads": 1, "seed": 9},
           "student": {"max_steps": 5}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert _cli(["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o"), "eval_episodes=5"]) == 0
    out = json.loads((tmp_path / "o" / "results.json").read_text())
    assert out["config"]["seed"] == 9 and out["results"][0]["episodes"] == 5 and out["method"].endswith("(unguided)")
