"""benchmarks/teacher_iu.py's scoring: the held-out split of the real IU reports and the gold
agreement figures, by hand."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from fixtures.labeler_realdata import iu_dev_csv  # noqa: F401  (a pytest fixture)
from kdistill.labels import FINDING_INDEX, NUM_FINDINGS

SPEC = importlib.util.spec_from_file_location("teacher_iu", Path(__file__).parents[1] / "benchmarks" / "teacher_iu.py")
iu = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(iu)


def _rows(*named):
    out = np.full((len(named), NUM_FINDINGS), np.nan)
    for i, names in enumerate(named):
        for name, value in names.items():
            out[i, FINDING_INDEX[name]] = value
    return out


def test_gold_scores_by_hand():
    judged = [FINDING_INDEX["Edema"], FINDING_INDEX["Cardiomegaly"]]
    gold = _rows({"Edema": 1, "Cardiomegaly": 0}, {"Edema": 0, "Cardiomegaly": 0}, {"Edema": 0, "Cardiomegaly": 1})
    # study 0: names Edema (right); study 1: names Cardiomegaly (wrong); study 2: names nothing
    # (misses Cardiomegaly); Pneumonia named in study 0 is not judged and does not count.
    said = _rows({"Edema": 1, "Pneumonia": 1}, {"Cardiomegaly": 1}, {})
    got = iu.gold_scores(said, gold, judged)
    assert got["n"] == 3 and got["consistent_with_gold"] == pytest.approx(1 / 3, abs=1e-4)
    # named positives: 2 (1 right) -> P 0.5; gold positives 2 (1 found) -> R 0.5
    assert got["precision"] == pytest.approx(0.5) and got["recall"] == pytest.approx(0.5)
    assert got["f1"] == pytest.approx(0.5)
    lo, hi = got["interval95"]
    assert lo < 1 / 3 < hi


def test_wilson_interval_by_hand():
    # k=8, n=10: centre (0.8 + 1.96²/20) / (1 + 1.96²/10), half-width from the Wilson formula
    z, p, n = 1.96, 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert iu._wilson(8, 10) == [round(centre - half, 4), round(centre + half, 4)]


def test_real_iu_reports_split_and_judged_findings(iu_dev_csv):
    studies, gold, judged = iu.read_iu(iu_dev_csv)
    assert len(studies) == gold.shape[0] == 1537
    assert sum(s.split == "test" for s in studies) == 321  # sha256(id) % 5 == 0
    assert [s.study_id for s in studies if s.split == "test"][:3] == ["CXR2", "CXR34", "CXR62"]
    assert len(judged) == 7 and FINDING_INDEX["No Finding"] not in judged
