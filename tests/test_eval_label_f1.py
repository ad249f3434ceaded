"""Report label F1 and rationale consistency against hand values and scikit-learn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from eval import label_f1 as L
from kdistill.labeler import get_labeler
from kdistill.labeler.consistency import consistency_scores
from kdistill.labels import COMPETITION_INDICES, FINDING_INDEX

METRICS = Path(__file__).resolve().parents[1] / "eval" / "metrics"
NAN = np.nan


def _row(**values):
    row = np.full(14, NAN)
    for name, v in values.items():
        row[FINDING_INDEX[name.replace("_", " ")]] = v
    return row


def test_binarize_two_mappings():
    labels = np.array([[1.0, 0.0, -1.0, NAN] + [NAN] * 10])
    assert L.binarize(labels)[0, :4].tolist() == [1, 0, 0, 0]  # positive only
    assert L.binarize(labels, uncertain_positive=True)[0, :4].tolist() == [1, 0, 1, 0]  # f1chexbert "rrg"


def test_label_f1_hand_case_both_mappings():
    gen = np.stack([_row(Edema=1, Cardiomegaly=1), _row(Pleural_Effusion=-1), _row(No_Finding=1)])
    ref = np.stack([_row(Edema=1), _row(Pleural_Effusion=1), _row(No_Finding=1, Cardiomegaly=0)])
    # positive only: gen positives {Edema, Cardiomegaly} {} {No Finding}; ref {Edema} {PE} {No Finding}
    # tp 2 (Edema, No Finding), fp 1 (Cardiomegaly), fn 1 (PE) -> micro 4/6
    out = L.label_f1(gen, ref)
    assert out["micro_14"] == pytest.approx(4 / 6)
    # per finding: Edema 1, No Finding 1, Cardiomegaly 0, PE 0, ten findings without any positive -> 0
    assert out["macro_14"] == pytest.approx(2 / 14)
    # five: Cardiomegaly, Edema, Pleural Effusion (+ Atelectasis, Consolidation empty): tp 1, fp 1, fn 1
    assert out["micro_5"] == pytest.approx(0.5)
    assert out["macro_5"] == pytest.approx(1 / 5)
    assert "no_positives/Fracture" in out and "no_positives/Edema" not in out
    # uncertain as positive: the generated -1 for PE now matches -> tp 3, fp 1, fn 0
    rrg = L.label_f1(gen, ref, uncertain_positive=True)
    assert rrg["micro_14"] == pytest.approx(6 / 7)
    assert rrg["f1/Pleural Effusion"] == 1.0


def test_label_f1_matches_sklearn_over_binary_matrices():
    rng = np.random.default_rng(0)
    gen = rng.choice([1.0, 0.0, -1.0, NAN], size=(50, 14))
    ref = rng.choice([1.0, 0.0, -1.0, NAN], size=(50, 14))
    five = list(COMPETITION_INDICES)
    for unc in (False, True):
        g, r = L.binarize(gen, unc), L.binarize(ref, unc)
        out = L.label_f1(gen, ref, uncertain_positive=unc)
        assert out["micro_14"] == pytest.approx(f1_score(r, g, average="micro"))
        assert out["macro_14"] == pytest.approx(f1_score(r, g, average="macro", zero_division=0))
        assert out["micro_5"] == pytest.approx(f1_score(r[:, five], g[:, five], average="micro"))
        assert out["macro_5"] == pytest.approx(f1_score(r[:, five], g[:, five], average="macro", zero_division=0))


def test_report_label_metrics_names_one_labeler_and_both_variants():
    gen = np.stack([_row(Edema=1), _row(Edema=-1)])
    ref = np.stack([_row(Edema=1), _row(Edema=1)])
    out = L.report_label_metrics(gen, ref, None, "chexpert_rules_f1")
    assert out["chexpert_rules_f1/micro_14"] == pytest.approx(2 / 3)  # tp 1, fn 1
    assert out["chexpert_rules_f1/uncertain_positive/micro_14"] == 1.0
    assert all(k.startswith("chexpert_rules_f1/") for k in out)
    with pytest.raises(ValueError):
        L.report_label_metrics(gen, ref, None, "f1")


def test_texts_go_through_the_label_function_once_per_side():
    calls = []

    def fake_labeler(texts):
        calls.append(list(texts))
        return np.stack([_row(Edema=1) if "edema" in t else _row(No_Finding=1) for t in texts])

    out = L.report_label_metrics(["mild edema", "normal"], ["edema", "edema"], fake_labeler, "chexbert_f1")
    assert calls == [["mild edema", "normal"], ["edema", "edema"]]
    assert out["chexbert_f1/f1/Edema"] == pytest.approx(2 / 3)


def test_bad_label_values_are_rejected():
    bad = np.full((1, 14), 2.0)
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        L.label_f1(bad, bad)
    with pytest.raises(ValueError, match="shape"):
        L.label_f1(np.zeros((2, 13)), np.zeros((2, 13)))


def test_rationale_consistency_hand_case():
    # rationale mentions Edema (1) and Cardiomegaly (-1); the study has Edema (1) and Pleural Effusion (-1)
    said = np.stack([_row(Edema=1, Cardiomegaly=-1, Atelectasis=0)])
    truth = np.stack([_row(Edema=1, Pleural_Effusion=-1, Atelectasis=0)])
    out = consistency_scores(said, truth)
    # mentioned: tp 1 (Edema), fp 1 (Cardiomegaly), fn 1 (PE); a negative (0) is not a mention
    assert out == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})


def test_evaluate_modules_load_offline_and_equal_direct_functions():
    evaluate = pytest.importorskip("evaluate")
    rng = np.random.default_rng(3)
    gen = rng.choice([1.0, 0.0, -1.0, NAN], size=(12, 14))
    ref = rng.choice([1.0, 0.0, -1.0, NAN], size=(12, 14))
    metric = evaluate.load(str(METRICS / "label_f1"))
    assert metric.compute(predictions=gen.tolist(), references=ref.tolist()) == L.label_f1(gen, ref)
    assert metric.compute(predictions=gen.tolist(), references=ref.tolist(), labeler_name="chexpert_rules_f1") == \
        L.report_label_metrics(gen, ref, None, "chexpert_rules_f1")
    metric = evaluate.load(str(METRICS / "rationale_consistency"))
    assert metric.compute(predictions=gen.tolist(), references=ref.tolist()) == consistency_scores(gen, ref)


def test_end_to_end_from_text_with_the_project_labeler():
    pytest.importorskip("kdistill.labeler")
    label_fn, name = get_labeler()
    assert name == "chexpert_rules_f1"  # no CheXbert checkpoint given
    generated = ["Moderate cardiomegaly. Small left pleural effusion.", "No acute cardiopulmonary process."]
    reference = ["The heart is enlarged. There is a small left pleural effusion.", "Lungs are clear. No effusion."]
    out = L.report_label_metrics(generated, reference, label_fn, name)
    assert out["chexpert_rules_f1/f1/Cardiomegaly"] == 1.0
    assert out["chexpert_rules_f1/f1/Pleural Effusion"] == 1.0
    assert out["chexpert_rules_f1/micro_14"] == 1.0


def test_evaluate_module_labels_texts_with_the_project_labeler():
    evaluate = pytest.importorskip("evaluate")
    pytest.importorskip("kdistill.labeler")
    generated = ["Moderate cardiomegaly.", "Possible small right pleural effusion."]
    reference = ["The heart is enlarged.", "Small right pleural effusion."]
    got = evaluate.load(str(METRICS / "label_f1")).compute(predictions=generated, references=reference)
    label_fn, name = get_labeler()
    assert got == L.report_label_metrics(generated, reference, label_fn, name)
    assert got["chexpert_rules_f1/uncertain_positive/f1/Pleural Effusion"] == 1.0  # hedged -> positive
    assert got["chexpert_rules_f1/f1/Pleural Effusion"] == 0.0  # hedged -> negative
