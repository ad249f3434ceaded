"""Decisions a reader can trust: the operating-point policy (``kdistill.scoring.choose_thresholds``
with ``policy="prevalence"``) on a small validation split with rare findings, "No Finding"
consistent with the other decisions, and the checkpoint that states both (thresholds.json and
its model card)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdistill import config as cfglib
from kdistill import scoring
from kdistill.labels import FINDING_INDEX, FINDINGS, NUM_FINDINGS


def _small_split():
    """61 validation studies as in the demo. Atelectasis: 1 positive, scored below all 60
    negatives. Cardiomegaly: 3 positives, at 0.9, 0.8 (tied with two negatives) and 0.3."""
    n = 61
    probs = np.full((n, NUM_FINDINGS), 0.2)
    y = np.zeros((n, NUM_FINDINGS), int)
    a, c = FINDING_INDEX["Atelectasis"], FINDING_INDEX["Cardiomegaly"]
    probs[:, a] = np.linspace(0.65, 0.06, n)
    probs[60, a], y[60, a] = 0.05, 1
    probs[:, c] = 0.1
    probs[:5, c] = [0.9, 0.8, 0.8, 0.8, 0.3]
    y[[0, 1, 4], c] = 1
    return probs, y, a, c


def test_f1_collapses_on_a_rare_finding_and_prevalence_does_not():
    probs, y, a, c = _small_split()
    f1_t, f1_score, _ = scoring.choose_thresholds(probs, y)
    # F1: t = 0.05 calls all 61 (tp 1, fp 60 -> F1 2/62); every higher t has tp 0 -> F1 0
    assert f1_t[a] == 0.05 and f1_score[a] == pytest.approx(2 / 62) and (probs[:, a] >= f1_t[a]).sum() == 61
    t, f1, defaulted = scoring.choose_thresholds(probs, y, policy="prevalence")
    # one labelled positive: the highest score, one call (a false one; F1 0)
    assert t[a] == 0.65 and (probs[:, a] >= t[a]).sum() == 1 and f1[a] == 0.0
    # three positives: t = 0.9 calls 1, t = 0.8 calls 4 (the tie) >= 3 -> 0.8; tp 2, fp 2, fn 1 -> F1 4/7
    assert t[c] == 0.8 and f1[c] == pytest.approx(4 / 7)
    assert defaulted == [f for f in FINDINGS if f not in ("Atelectasis", "Cardiomegaly")]
    assert np.all(np.delete(t, [a, c]) == 0.5) and np.isnan(np.delete(f1, [a, c])).all()


def test_prevalence_calls_each_finding_about_as_often_as_it_occurs_on_many_small_splits():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = (rng.random((61, NUM_FINDINGS)) < rng.uniform(0.01, 0.4, NUM_FINDINGS)).astype(int)
        probs = np.clip(0.3 * y + rng.random(y.shape) * 0.4 + rng.uniform(0, 0.3, NUM_FINDINGS), 0, 1)
        t, _, defaulted = scoring.choose_thresholds(probs, y, policy="prevalence")
        calls, positives = (probs >= t).sum(0), y.sum(0)
        for j in range(NUM_FINDINGS):
            if FINDINGS[j] in defaulted:
                continue
            assert calls[j] == positives[j]  # continuous scores: no ties, exactly k calls
            assert t[j] >= np.sort(probs[:, j])[-positives[j]]


def test_the_default_policy_keeps_choose_thresholds_unchanged():
    probs, y, _, _ = _small_split()
    mask = np.random.default_rng(1).random(y.shape) > 0.1
    t, f1, defaulted = scoring.choose_thresholds(probs, y, mask)
    t_f1, f1_f1, defaulted_f1 = scoring.choose_thresholds(probs, y, mask, policy="f1")
    np.testing.assert_array_equal(t, t_f1)
    np.testing.assert_array_equal(f1, f1_f1)
    assert defaulted == defaulted_f1
    with pytest.raises(ValueError, match="unknown threshold policy"):
        scoring.choose_thresholds(probs, y, policy="median")


def test_no_finding_is_decided_only_when_nothing_but_support_devices_is():
    t = np.full(NUM_FINDINGS, 0.5)
    p = np.full((4, NUM_FINDINGS), 0.1)
    nf, sd, edema = FINDING_INDEX["No Finding"], FINDING_INDEX["Support Devices"], FINDING_INDEX["Edema"]
    p[:, nf] = [0.9, 0.9, 0.9, 0.2]
    p[1, edema] = 0.7  # a finding: No Finding is not decided
    p[2, sd] = 0.7  # a device: No Finding still is
    p[3, edema] = 0.7
    d = scoring.decide(p, t)
    assert d[:, nf].tolist() == [True, False, True, False]
    assert d[:, edema].tolist() == [False, True, False, True] and d[:, sd].tolist() == [False, False, True, False]


def test_training_writes_the_policy_its_rule_and_a_model_card(tmp_path):
    from student.synthetic import TINY_MODEL, make_prepared, make_rationales, make_tokenizer
    from student.train import StudentTrainConfig, train

    torch.set_num_threads(1)
    prep = make_prepared(16, 8, size=32)
    tok = make_tokenizer(prep)
    base = {"model": TINY_MODEL, "batch_size": 8, "max_steps": 2, "eval_every": 2, "save_every": 0,
            "warmup_steps": 1, "log_every": 1, "cpu": True, "num_threads": 1}
    cfg = cfglib.from_dict(StudentTrainConfig, base)
    assert cfg.threshold_policy == "prevalence"
    train(cfg, tmp_path, prep, tok, make_rationales(prep))
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved["policy"] == "prevalence" and saved["n_studies"] == 8 and saved["chosen_on"] == "validate"
    card = (tmp_path / "README.md").read_text()
    assert "Research model output, not a diagnosis." in card
    assert "16 training studies, 8 validation studies" in card and "prevalence-matched" in card
    assert "constant-prevalence predictor" in card and "| Support Devices |" in card
    v = json.loads((tmp_path / "metrics.json").read_text())["validation"]
    assert f"| micro-AUC, 14 findings | {v['micro_auc']:.4f} |" in card
