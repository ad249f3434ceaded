"""benchmarks/peers.py --combine: runs of several student recipes, each under its own --name, make one
table; the same row name and seed given twice (two recipes left as "student") is refused rather
than averaged into one row."""
import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("peers", Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py")
peers = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(peers)


def _run(path: Path, name: str, seed: int, auc: float) -> str:
    sets = {"test": {"micro_auc": auc, "micro_ci": [auc - 0.1, auc + 0.05], "macro_auc": auc - 0.1,
                     "macro_ci": [auc - 0.2, auc]}}
    path.write_text(json.dumps({
        "what": "peers", "command": f"peers --name {name} --seeds {seed}", "steps": 450, "batch_size": 32, "threads": 1,
        "sets": {"test": 60}, "train_studies": 479, "cpu_count": 2, "torch": "x",
        "per_seed": {name: {str(seed): {"train_s": 10.0 * (seed + 1), "sets": sets}}}, "student": {}}))
    return str(path)


def test_combine_keeps_named_students_apart_and_averages_seeds(tmp_path):
    files = [_run(tmp_path / "a.json", "student:vit", 0, 0.86), _run(tmp_path / "b.json", "student:vit", 1, 0.88),
             _run(tmp_path / "c.json", "student:r18", 0, 0.95)]
    assert peers.combine(files, tmp_path / "out.json") == 0
    summary = json.loads((tmp_path / "out.json").read_text())["summary"]
    assert set(summary) == {"student:vit", "student:r18"}
    vit = summary["student:vit"]
    assert vit["seeds"] == 2 and vit["test/micro_auc"] == pytest.approx(0.87)
    assert vit["test/micro_sd"] == pytest.approx(0.0141421, abs=1e-6)  # sd (ddof 1) of 0.86, 0.88
    assert vit["test/micro_ci"] == pytest.approx([0.77, 0.92]) and vit["train_s"] == pytest.approx(15.0)
    assert summary["student:r18"]["seeds"] == 1 and summary["student:r18"]["test/micro_sd"] == 0.0


def test_combine_refuses_the_same_row_and_seed_twice(tmp_path):
    files = [_run(tmp_path / "a.json", "student", 0, 0.86), _run(tmp_path / "b.json", "student", 0, 0.95)]
    with pytest.raises(SystemExit, match="--name"):
        peers.combine(files, tmp_path / "out.json")


def test_combine_keeps_each_seeds_thread_count_and_time(tmp_path):
    a = json.loads(Path(_run(tmp_path / "a.json", "resnet18", 0, 0.90)).read_text())
    a["threads"] = 2
    (tmp_path / "a.json").write_text(json.dumps(a))
    files = [str(tmp_path / "a.json"), _run(tmp_path / "b.json", "resnet18", 1, 0.92)]
    assert peers.combine(files, tmp_path / "out.json") == 0
    out = json.loads((tmp_path / "out.json").read_text())
    row = out["summary"]["resnet18"]
    assert row["train_s_by_seed"] == {"0": 10.0, "1": 20.0} and row["train_s"] == pytest.approx(15.0)
    assert row["threads"] == [1, 2]  # seed 0 timed on 2 threads, seed 1 on one (the run-level value)
    assert out["per_seed"]["resnet18"]["0"]["threads"] == 2 and out["per_seed"]["resnet18"]["1"]["threads"] == 1
