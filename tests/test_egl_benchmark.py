"""benchmarks/egl.py's table: run names and the paired-by-seed intervals, against values worked by hand."""
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("egl", Path(__file__).resolve().parents[1] / "benchmarks" / "egl.py")
egl = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(egl)


def test_run_names_say_variant_distillation_and_coverage():
    assert egl.run_key("plain", False, 0.1) == "plain"  # no regions: one run whatever the coverage
    assert egl.run_key("plain", True, 1.0) == "distill"
    assert egl.run_key("+ ha", False, 0.1) == "+ ha @ rois 0.1"
    assert egl.run_key("+ ha + dal", True, 1.0) == "distill + ha + dal @ rois 1"
    assert egl.run_key("+ dal", True, 0.1) == "distill + dal"


def test_summarise_pairs_by_seed_with_t_intervals_worked_by_hand():
    r = lambda x: {"auc_reversed": x}  # noqa: E731
    runs = {"plain": {0: r(0.80), 1: r(0.82)}, "+ ha @ rois 1": {0: r(0.86), 1: r(0.90)},
            "distill": {0: r(0.78), 1: r(0.80)}, "distill + ha @ rois 1": {0: r(0.88), 1: r(0.87)}}
    t = egl.summarise(runs)
    ha = t["+ ha @ rois 1"]["auc_reversed"]
    # diffs 0.06, 0.08: mean 0.07, sd 0.0141421; t(0.975, 1 df) = 12.7062 -> half width 12.7062 * 0.0141421 / sqrt(2)
    assert ha["paired_diff_vs_plain"] == pytest.approx(0.07)
    assert ha["paired_diff_ci95"] == pytest.approx([0.07 - 0.127062, 0.07 + 0.127062], abs=1e-5)
    assert ha["mean"] == pytest.approx(0.88) and ha["n_seeds"] == 2
    dha = t["distill + ha @ rois 1"]["auc_reversed"]
    assert dha["paired_diff_vs_distill"] == pytest.approx(0.085)  # diffs 0.10, 0.07
    assert dha["paired_diff_vs_undistilled"] == pytest.approx(-0.005)  # vs + ha @ rois 1: 0.02, -0.03
    # diffs 0.02, -0.03: sd 0.0353553 -> half width 12.7062 * 0.0353553 / sqrt(2) = 0.317655
    assert dha["paired_diff_vs_undistilled_ci95"] == pytest.approx([-0.005 - 0.317655, -0.005 + 0.317655], abs=1e-5)
    assert "paired_diff_vs_undistilled" in t["distill"]["auc_reversed"]  # distill vs plain, paired
    assert t["distill"]["auc_reversed"]["paired_diff_vs_undistilled"] == pytest.approx(-0.02)


def test_one_seed_gives_no_interval_rather_than_a_fake_one():
    t = egl.summarise({"plain": {0: {"auc_reversed": 0.8}}, "+ ha @ rois 1": {0: {"auc_reversed": 0.9}}})
    lo, hi = t["+ ha @ rois 1"]["auc_reversed"]["paired_diff_ci95"]
    assert lo != lo and hi != hi  # NaN: one difference has no spread
