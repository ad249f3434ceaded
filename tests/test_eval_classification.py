"""Classification metrics against scikit-learn and hand-computed values."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from kdistill.scoring import choose_thresholds
from eval import classification as C
from kdistill.labels import COMPETITION_INDICES, FINDINGS, FINDING_INDEX

METRICS = Path(__file__).resolve().parents[1] / "eval" / "metrics"


def _random(n=60, seed=0, p_pos=0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 14)) < p_pos).astype(int)
    y[0], y[1] = 1, 0  # both classes in every column
    probs = np.clip(0.35 * y + rng.random((n, 14)) * 0.7, 0, 1).round(2)  # rounding makes ties
    return probs, y


def test_binary_auc_matches_sklearn_with_ties():
    probs, y = _random()
    for j in range(14):
        assert C.binary_auc(y[:, j], probs[:, j]) == pytest.approx(roc_auc_score(y[:, j], probs[:, j]), abs=1e-12)


def test_binary_auc_hand_case():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert C.binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    # a tie between a positive and a negative counts one half
    assert C.binary_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_micro_and_macro_auc_match_sklearn_unmasked():
    probs, y = _random()
    out = C.auc_metrics(probs, y)
    assert out["auc_micro_14"] == pytest.approx(roc_auc_score(y, probs, average="micro"), abs=1e-12)
    assert out["auc_macro_14"] == pytest.approx(roc_auc_score(y, probs, average="macro"), abs=1e-12)
    five = list(COMPETITION_INDICES)
    assert out["auc_micro_5"] == pytest.approx(roc_auc_score(y[:, five], probs[:, five], average="micro"), abs=1e-12)
    assert out["auc_macro_5"] == pytest.approx(roc_auc_score(y[:, five], probs[:, five], average="macro"), abs=1e-12)
    for j, finding in enumerate(FINDINGS):
        assert out[f"auc/{finding}"] == pytest.approx(roc_auc_score(y[:, j], probs[:, j]), abs=1e-12)


def test_masked_auc_is_sklearn_on_the_counted_entries():
    probs, y = _random(seed=1)
    rng = np.random.default_rng(5)
    mask = rng.random(y.shape) > 0.25
    mask[:2] = True
    out = C.auc_metrics(probs, y, mask)
    assert out["auc_micro_14"] == pytest.approx(roc_auc_score(y[mask], probs[mask]), abs=1e-12)
    per = [roc_auc_score(y[mask[:, j], j], probs[mask[:, j], j]) for j in range(14)]
    assert out["auc_macro_14"] == pytest.approx(np.mean(per), abs=1e-12)
    # masking is not the same as scoring everything: the masked-out entries really are left out
    assert out["auc_micro_14"] != pytest.approx(roc_auc_score(y, probs, average="micro"), abs=1e-9)


def test_label_policy_uncertain_ignored_blank_negative():
    labels = np.zeros((4, 14))
    labels[:, 0] = [1.0, np.nan, -1.0, 0.0]
    labels[0, 1:] = 1.0  # other columns: one positive each so nothing else is skipped
    probs = np.full((4, 14), 0.5)
    probs[:, 0] = [0.9, 0.2, 0.1, 0.5]
    y, mask = C.targets(labels)
    assert y[:, 0].tolist() == [1, 0, 0, 0] and mask[:, 0].tolist() == [True, True, False, True]
    # uncertain left out, blank negative: positive 0.9 beats negatives 0.2 and 0.5
    assert C.auc_metrics(probs, y, mask)["auc/Atelectasis"] == 1.0
    # U-Ones: the uncertain study (score 0.1) becomes a positive below both negatives -> 2/4
    y1, m1 = C.targets(labels, uncertain="ones")
    assert C.auc_metrics(probs, y1, m1)["auc/Atelectasis"] == 0.5


def test_single_class_finding_is_skipped_by_name_not_nan():
    probs, y = _random(seed=2)
    j = FINDING_INDEX["Fracture"]
    y[:, j] = 0
    out = C.auc_metrics(probs, y)
    assert "auc/Fracture" not in out
    assert out["skipped/auc/Fracture"] == C.SINGLE_CLASS
    others = [k for k in range(14) if k != j]
    assert out["auc_macro_14"] == pytest.approx(np.mean([roc_auc_score(y[:, k], probs[:, k]) for k in others]))
    # micro keeps the single-class column's entries, exactly as sklearn's average="micro"
    assert out["auc_micro_14"] == pytest.approx(roc_auc_score(y, probs, average="micro"), abs=1e-12)
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in out.values())


def test_bootstrap_resamples_studies_like_a_naive_sklearn_loop():
    probs, y = _random(n=40, seed=3)
    out = C.bootstrap_auc_ci(probs, y, n_bootstrap=60, seed=7)
    rng = np.random.default_rng(7)
    micro, macro = [], []
    for _ in range(60):
        idx = rng.integers(0, 40, 40)  # whole studies (rows) drawn with replacement
        yy, pp = y[idx], probs[idx]
        micro.append(roc_auc_score(yy.ravel(), pp.ravel()))
        macro.append(np.mean([roc_auc_score(yy[:, j], pp[:, j]) for j in range(14) if 0 < yy[:, j].sum() < 40]))
    assert out["auc_micro_14_ci_low"] == pytest.approx(np.quantile(micro, 0.025), abs=1e-12)
    assert out["auc_micro_14_ci_high"] == pytest.approx(np.quantile(micro, 0.975), abs=1e-12)
    assert out["auc_macro_14_ci_low"] == pytest.approx(np.quantile(macro, 0.025), abs=1e-12)
    assert out["auc_macro_14_ci_high"] == pytest.approx(np.quantile(macro, 0.975), abs=1e-12)
    assert out == C.bootstrap_auc_ci(probs, y, n_bootstrap=60, seed=7)  # seeded
    assert out != C.bootstrap_auc_ci(probs, y, n_bootstrap=60, seed=8)
    point = C.auc_metrics(probs, y)["auc_micro_14"]
    assert out["auc_micro_14_ci_low"] <= point <= out["auc_micro_14_ci_high"]


def test_choose_thresholds_maximises_validation_f1_hand_case():
    probs = np.full((4, 14), 0.3)
    y = np.zeros((4, 14), int)
    probs[:, 0] = [0.1, 0.4, 0.35, 0.8]
    y[:, 0] = [0, 0, 1, 1]
    # F1 at t=0.8: 2/3; t=0.4: 1/2; t=0.35: 4/5 (best); t=0.1: 2/3
    t, _, defaulted = choose_thresholds(probs, y)
    assert t[0] == 0.35
    assert defaulted == list(FINDINGS[1:])  # no validation positive: 0.5, named
    assert np.all(t[1:] == 0.5)
    # applied to test: predictions p >= 0.35
    test_probs = np.full((4, 14), 0.1)
    test_y = np.zeros((4, 14), int)
    test_probs[:, 0] = [0.36, 0.34, 0.9, 0.2]
    test_y[:, 0] = [1, 1, 0, 0]
    out = C.f1_metrics(test_probs, test_y, thresholds=t)
    # predicted [1, 0, 1, 0] vs truth [1, 1, 0, 0]: tp 1, fp 1, fn 1 -> F1 0.5
    assert out["f1/Atelectasis"] == 0.5
    assert out["skipped/f1/Cardiomegaly"] == "no positives"


def test_f1_micro_macro_match_sklearn():
    probs, y = _random(seed=4)
    rng = np.random.default_rng(1)
    t = rng.uniform(0.2, 0.8, 14)
    out = C.f1_metrics(probs, y, thresholds=t)
    pred = (probs >= t).astype(int)
    assert out["f1_micro_14"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert out["f1_macro_14"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    five = list(COMPETITION_INDICES)
    assert out["f1_macro_5"] == pytest.approx(f1_score(y[:, five], pred[:, five], average="macro", zero_division=0))


def test_expected_calibration_error_hand_case():
    probs = np.zeros((4, 14))
    y = np.zeros((4, 14), int)
    probs[:, 0] = [0.15, 0.15, 0.95, 0.95]
    y[:, 0] = [0, 1, 1, 1]
    mask = np.zeros((4, 14), bool)
    mask[:, 0] = True
    # bin 0.1-0.2: conf 0.15, acc 0.5, share 1/2; bin 0.9-1.0: conf 0.95, acc 1, share 1/2
    assert C.expected_calibration_error(probs, y, mask) == pytest.approx(0.5 * 0.35 + 0.5 * 0.05)


def test_classification_metrics_flat_and_nan_free():
    probs, y = _random(seed=6)
    labels = y.astype(float)
    labels[3, 0] = -1.0
    labels[4, 2] = np.nan
    out = C.classification_metrics(probs, labels, n_bootstrap=20)
    for key in ("auc_micro_14", "auc_macro_14", "auc_micro_5", "auc_macro_5", "f1_micro_14", "ece",
                "auc_micro_14_ci_low", "auc_macro_5_ci_high", "auc/Edema", "f1/Edema"):
        assert isinstance(out[key], float) and math.isfinite(out[key]), key
    assert out["n_counted_labels"] == 60 * 14 - 1  # the uncertain entry is left out


def test_evaluate_module_loads_offline_and_equals_direct_function():
    evaluate = pytest.importorskip("evaluate")
    probs, y = _random(n=30, seed=8)
    labels = y.astype(float)
    labels[2, 3] = -1.0
    labels[5, 5] = np.nan
    metric = evaluate.load(str(METRICS / "classification_auc"))
    got = metric.compute(predictions=probs.tolist(), references=labels.tolist(), n_bootstrap=10, seed=1)
    assert got == C.classification_metrics(probs, labels, n_bootstrap=10, seed=1)
