"""kdistill.scoring: the one AUC, the one threshold rule (ties included) and thresholds.json,
shared by the student's checkpoint and ``kdistill eval``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from kdistill import config as cfglib
from kdistill import scoring
from kdistill.errors import DataError
from kdistill.labels import FINDINGS, NUM_FINDINGS


def _one_finding(probs, y):
    p = np.full((len(probs), NUM_FINDINGS), 0.1)
    t = np.zeros((len(probs), NUM_FINDINGS), int)
    p[:, 0], t[:, 0] = probs, y
    return p, t


def test_a_tie_in_f1_goes_to_the_highest_threshold():
    # t = 0.9: tp 1, fn 1 -> F1 2/3; t = 0.6: tp 2, fp 2 -> F1 2/3 as well. The highest wins
    # (sklearn's precision_recall_curve + argmax, the student's former rule, took 0.6).
    p, y = _one_finding([0.9, 0.8, 0.7, 0.6], [1, 0, 0, 1])
    thresholds, f1, defaulted = scoring.choose_thresholds(p, y)
    assert thresholds[0] == 0.9 and f1[0] == pytest.approx(2 / 3)
    assert defaulted == list(FINDINGS[1:]) and np.all(thresholds[1:] == 0.5) and np.isnan(f1[1:]).all()


def test_equal_scores_are_one_candidate_and_the_mask_drops_entries():
    p, y = _one_finding([0.8, 0.8, 0.4, 0.2], [1, 0, 1, 0])
    # t = 0.8 takes both tied rows (tp 1, fp 1, fn 1: 0.5); t = 0.4: tp 2, fp 1 -> 0.8; t = 0.2: 2/3
    thresholds, f1, _ = scoring.choose_thresholds(p, y)
    assert thresholds[0] == 0.4 and f1[0] == pytest.approx(0.8)
    mask = np.ones_like(y, bool)
    mask[1, 0] = False  # the negative tied at 0.8 is not counted: t = 0.4 is now perfect
    thresholds, f1, _ = scoring.choose_thresholds(p, y, mask)
    assert thresholds[0] == 0.4 and f1[0] == 1.0


def test_auc_summary_equals_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, NUM_FINDINGS))
    p = np.clip(y * 0.3 + rng.random((40, NUM_FINDINGS)) * 0.7, 0, 1)
    mask = rng.random((40, NUM_FINDINGS)) > 0.2
    out = scoring.auc_summary(p, y, mask)
    assert out["micro_auc"] == pytest.approx(roc_auc_score(y[mask], p[mask]), abs=1e-12)
    per = [roc_auc_score(y[mask[:, j], j], p[mask[:, j], j]) for j in range(NUM_FINDINGS)]
    assert out["macro_auc"] == pytest.approx(np.mean(per), abs=1e-12) and out["auc_findings"] == NUM_FINDINGS


def test_thresholds_file_round_trips_and_bad_files_are_named(tmp_path):
    values = np.linspace(0.1, 0.9, NUM_FINDINGS)
    scoring.save_thresholds(tmp_path, values, chosen_on="validate")
    assert np.array_equal(scoring.read_thresholds(tmp_path), values)
    assert scoring.read_thresholds(tmp_path / "none") is None
    (tmp_path / "thresholds.json").write_text(json.dumps({f: 0.3 for f in FINDINGS}))
    assert np.all(scoring.read_thresholds(tmp_path) == 0.3)
    for bad, problem in (("{not json", "not valid JSON"), (json.dumps([0.5] * 13), "list of 14"),
                         (json.dumps({"thresholds": ["x"] * 14}), "must be numbers")):
        (tmp_path / "thresholds.json").write_text(bad)
        with pytest.raises(DataError, match=problem) as err:
            scoring.read_thresholds(tmp_path)
        assert "thresholds.json" in str(err.value)
    with pytest.raises(ValueError, match="finite"):
        scoring.save_thresholds(tmp_path, np.full(NUM_FINDINGS, np.nan))


@pytest.mark.parametrize("policy", ["prevalence", "f1"])
def test_the_checkpoints_thresholds_equal_what_eval_chooses_on_the_same_validation_split(tmp_path, policy):
    """One rule, two callers: the thresholds ``student train`` writes from its validation pass and
    those ``kdistill eval`` chooses from the checkpoint's validation predictions agree."""
    from eval import run as eval_run
    from eval.references import references_from_prepared
    from student.synthetic import TINY_MODEL, make_prepared, make_tokenizer
    from student.train import StudentTrainConfig, train

    torch.set_num_threads(1)
    prep = make_prepared(16, 12, size=32)
    tok = make_tokenizer(prep)
    cfg = cfglib.from_dict(StudentTrainConfig, {
        "model": TINY_MODEL, "batch_size": 8, "max_steps": 2, "eval_every": 2, "save_every": 0, "warmup_steps": 1,
        "cpu": True, "num_threads": 1, "loss": {"rep": 0, "kd": 0, "emb": 0}, "threshold_policy": policy})
    ckpt = tmp_path / "student"
    train(cfg, ckpt, prep, tok, None)
    saved = scoring.read_thresholds(ckpt)
    prep.save_to_disk(str(tmp_path / "prepared" / "dataset"))
    (ckpt / "thresholds.json").unlink()  # eval must now choose them itself, on the validate split
    val = references_from_prepared(tmp_path / "prepared", "validate")
    chosen, source = eval_run._thresholds_for_checkpoint(ckpt, val, eval_run.EvalConfig(threshold_policy=policy))
    assert "validate" in source
    np.testing.assert_allclose(chosen, saved, rtol=0, atol=1e-6)
    assert eval_run.EvalConfig().threshold_policy == StudentTrainConfig().threshold_policy  # one default rule


def test_the_constant_prevalence_baseline_by_hand():
    from kdistill.scoring import prevalence_baseline_auc

    # training prevalence: finding 0 = 3/4, finding 1 = 1/3 (masked entries left out)
    train_y = np.array([[1, 0], [1, 1], [1, 0], [0, 0], [0, 1]], float)
    train_m = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [0, 0]], float)
    # scored entries: finding 0 positives 2 / negatives 1, finding 1 positives 1 / negatives 2
    y = np.array([[1, 1], [1, 0], [0, 0]], float)
    m = np.ones_like(y)
    # constant scores 0.75 (finding 0) and 1/3 (finding 1): pairs (pos, neg) with pos from finding 0
    # beat negatives of finding 1 (2 x 2 = 4 wins), tie the negative of finding 0 (2 x 0.5), and the
    # positive of finding 1 loses to finding 0's negative (0) and ties finding 1's (2 x 0.5): 6 / 9
    assert prevalence_baseline_auc(train_y, train_m, y, m) == pytest.approx(6 / 9)
