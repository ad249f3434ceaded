"""benchmarks/distill_regimes.py's own arithmetic: the true labels read in the order of the studies
asked for, the paired difference's t interval (hand-computed), and --combine merging the files of
one process per regime into one table."""
import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
SPEC = importlib.util.spec_from_file_location("distill_regimes", BENCH / "distill_regimes.py")
dr = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(dr)

from kdistill.labels import FINDINGS  # noqa: E402


def test_true_labels_follow_the_study_order(tmp_path):
    header = "subject_id,study_id," + ",".join(FINDINGS)
    rows = ["1,50000001," + ",".join("1.0" if f == "Edema" else "" for f in FINDINGS),
            "2,50000002," + ",".join("1.0" if f == "Cardiomegaly" else "" for f in FINDINGS)]
    with gzip.open(tmp_path / "ground_truth.csv.gz", "wt") as fh:
        fh.write("\n".join([header] + rows) + "\n")
    got = dr.true_labels(tmp_path, ["50000002", 50000001])
    assert got[0, FINDINGS.index("Cardiomegaly")] == 1.0 and got[1, FINDINGS.index("Edema")] == 1.0
    assert np.isnan(got).sum() == 2 * len(FINDINGS) - 2


def test_paired_interval_by_hand():
    # d = 0.01, 0.03, 0.02, 0.04: mean 0.025, sd sqrt(0.0005/3) = 0.01290994, t(0.975, 3) = 3.1824463
    out = dr.paired([0.01, 0.03, 0.02, 0.04])
    half = 3.1824463 * 0.01290994 / 2.0
    assert out["mean"] == pytest.approx(0.025)
    assert out["sd"] == pytest.approx(0.0129099, rel=1e-5)
    assert out["ci95"] == pytest.approx([0.025 - half, 0.025 + half], abs=1e-8)
    assert out["positive"] == 4 and out["n"] == 4
    assert math.isnan(dr.paired([0.1])["sd"])


def test_combine_pairs_by_seed_across_files(tmp_path):
    def part(name, regime, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"regimes": {regime: {"run": "r", "heldout": "h", "heldout_studies": 3,
                                                         "constant_prevalence_micro_auc": 0.5}},
                                    "per_seed": {regime: rows},
                                    "val_curves": {f"{regime}/+ report/0": [[10, 0.7], [20, 0.8]],
                                                   f"{regime}/+ report/1": [[10, 0.9], [20, 1.0]]}}))
        return str(path)

    row = lambda a, f: {"micro_auc": a, "macro_auc": a, "f1_micro": f, "f1_macro": f}  # noqa: E731
    a = part("a.json", "today", {"+ report": {"0": row(0.80, 0.2), "1": row(0.82, 0.3)},
                                 "+ distillation": {"0": row(0.81, 0.25)}})
    b = part("b.json", "today", {"+ distillation": {"1": row(0.80, 0.35)}})
    assert dr.combine([a, b], str(tmp_path / "out.json")) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    diff = out["summary"]["today"]["distilled_minus_report"]
    assert out["summary"]["today"]["paired_seeds"] == [0, 1]
    assert diff["micro_auc"]["mean"] == pytest.approx((0.01 - 0.02) / 2)
    assert diff["f1_micro"]["mean"] == pytest.approx(0.05)
    assert out["val_curve_means"]["today"]["+ report"] == [[10, 0.8], [20, 0.9]]
