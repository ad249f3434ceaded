"""The labeler on real reports: IU / Open-i sentences read by category, and the dev-set figure
against NegBio's gold kept from regressing (benchmarks/labeler_real.py measures it in full)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

from fixtures.labeler_realdata import iu_dev_csv  # noqa: F401  (a pytest fixture)
from kdistill.labeler import label_report, label_reports, mentions
from kdistill.labeler.command import read_labels
from kdistill.labels import FINDING_INDEX

SENTENCES = Path(__file__).parent / "fixtures" / "labeler_real_sentences.yaml"
MAPPED = ("No Finding", "Cardiomegaly", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
          "Pleural Effusion")
# Measured (benchmarks/labeler_real.py --repeats 9): positive only 0.902 (all), 0.911 (develop),
# 0.862 (held out); uncertain as positive 0.885 (all).  Before the third pass ("borderline" as
# CheXpert reads it, ab687d0): 0.894 / 0.903 / 0.852 and 0.885; before the second pass
# (454ea99): 0.891 / 0.900 / 0.850 and 0.883; the labeler at c815593 gave 0.837 / 0.844 / 0.808.
FLOORS = {"all": 0.898, "develop": 0.906, "held_out": 0.855}
UNCERTAIN_AS_POSITIVE_FLOOR = 0.88


def _items():
    out = []
    for group in yaml.safe_load(SENTENCES.read_text()):
        for item in group["items"]:
            labels = {f: (math.nan if v == "blank" else float(v)) for f, v in item["labels"].items()}
            out.append(pytest.param(item["text"], labels, id=f"{group['category'][:24]}: {item['text'][:50]}"))
    return out


@pytest.mark.parametrize("text,expected", _items())
def test_real_sentence(text, expected):
    row = label_report(text)
    got = {f: float(row[FINDING_INDEX[f]]) for f in expected}
    wrong = {f: (v, got[f]) for f, v in expected.items() if not (v == got[f] or (math.isnan(v) and math.isnan(got[f])))}
    assert not wrong, f"(expected, got) {wrong}; mentions {mentions(text)}"


def test_every_category_has_sentences():
    groups = yaml.safe_load(SENTENCES.read_text())
    assert len(groups) >= 8 and all(len(g["items"]) >= 1 for g in groups)
    assert sum(len(g["items"]) for g in groups) >= 40


def _micro_f1(gold: np.ndarray, pred: np.ndarray, uncertain_positive: bool = False) -> float:
    cols = [FINDING_INDEX[f] for f in MAPPED]
    positive = (pred[:, cols] == 1) | (uncertain_positive & (pred[:, cols] == -1))
    return f1_score((gold[:, cols] == 1).ravel(), positive.ravel())  # pooled counts: micro over the 8


def test_iu_dev_positive_f1_does_not_regress(iu_dev_csv):  # noqa: F811
    texts, gold = read_labels(iu_dev_csv)
    assert len(texts) == 1537
    pred = label_reports(texts)
    held = np.arange(len(texts)) % 5 == 4
    parts = {"all": np.ones(len(texts), bool), "develop": ~held, "held_out": held}
    scores = {name: _micro_f1(gold[mask], pred[mask]) for name, mask in parts.items()}
    assert all(scores[name] >= floor for name, floor in FLOORS.items()), scores
    assert _micro_f1(gold, pred, uncertain_positive=True) >= UNCERTAIN_AS_POSITIVE_FLOOR
    # CheXpert's conventions hold on real text: No Finding is 1 or blank, never 0, and 1 only
    # when no other finding but Support Devices is positive or uncertain.
    no_finding = pred[:, FINDING_INDEX["No Finding"]]
    assert set(np.unique(no_finding[~np.isnan(no_finding)])) == {1.0}
    others = np.delete(pred, [FINDING_INDEX["No Finding"], FINDING_INDEX["Support Devices"]], axis=1)
    assert not np.isin(others[no_finding == 1], (1.0, -1.0)).any()
