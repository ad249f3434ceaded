"""The run spine: stage order, skip when up to date, rerun downstream of a change, text stages skipped
on a source without reports."""
import dataclasses
import json
import sys
import types

import pytest

from kdistill import pipeline
from kdistill.pipeline import RunConfig, Stage


@dataclasses.dataclass
class _Cfg:
    value: int = 1


def _make_stage_module(name, stage, calls):
    mod = types.ModuleType(name)
    mod.StageConfig = _Cfg

    def run_stage(cfg, ctx):
        calls.append(name)
        (ctx.stage_dir(stage) / "out.txt").write_text(str(cfg.value))
        return {"value": cfg.value, **({"has_reports": cfg.value != 7} if stage == "data" else {})}

    mod.run_stage = run_stage
    return mod


@pytest.fixture
def fake_stages(monkeypatch):
    calls = []
    for mod, stage in (("a", "data"), ("b", "prepare"), ("t", "teacher_generate"), ("c", "eval")):
        monkeypatch.setitem(sys.modules, f"_fake_stage.{mod}", _make_stage_module(f"_fake_stage.{mod}", stage, calls))
    stages = (
        Stage("data", "_fake_stage.a", "StageConfig", "data"),
        Stage("prepare", "_fake_stage.b", "StageConfig", "prepared", ("data",)),
        Stage("teacher_generate", "_fake_stage.t", "StageConfig", "rationales", ("prepare",)),
        Stage("eval", "_fake_stage.c", "StageConfig", "eval", ("teacher_generate",)),
    )
    monkeypatch.setattr(pipeline, "STAGES", stages)
    return calls


def test_runs_in_order_skips_when_up_to_date_and_reruns_downstream(tmp_path, fake_stages):
    calls = fake_stages
    result = pipeline.run(RunConfig(name="t"), tmp_path)
    assert calls == ["_fake_stage.a", "_fake_stage.b", "_fake_stage.t", "_fake_stage.c"]
    assert set(result["stages"].values()) == {"done"}
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "run.log").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["outputs"]["prepare"]["value"] == 1

    calls.clear()
    result = pipeline.run(RunConfig(name="t"), tmp_path)
    assert calls == [] and result["stages"]["data"] == "skipped (up to date)"

    calls.clear()
    pipeline.run(RunConfig(name="t", data={"value": 2}), tmp_path)
    assert calls == ["_fake_stage.a", "_fake_stage.b", "_fake_stage.t", "_fake_stage.c"]  # everything downstream

    calls.clear()
    pipeline.run(RunConfig(name="t", data={"value": 2}, prepare={"value": 5}), tmp_path)
    assert calls == ["_fake_stage.b", "_fake_stage.t", "_fake_stage.c"]
    assert (tmp_path / "prepared" / "out.txt").read_text() == "5"


def test_a_source_without_reports_skips_the_text_stages_by_name_and_runs_the_rest(tmp_path, fake_stages):
    calls = fake_stages
    result = pipeline.run(RunConfig(name="t", data={"value": 7}), tmp_path)  # the fake data stage: no reports
    assert calls == ["_fake_stage.a", "_fake_stage.b", "_fake_stage.c"]
    assert result["stages"]["teacher_generate"] == pipeline.NO_TEXT
    assert result["stages"]["eval"] == "done"


def test_unknown_stage_key_is_an_error(tmp_path, fake_stages):
    from kdistill.config import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("name: t\ndata:\n  valu: 3\n")
    with pytest.raises(ConfigError, match="data.valu"):
        pipeline.load_run_config(path)


def test_changed_config_clears_stale_outputs_but_keeps_nested_stage_folders(tmp_path, fake_stages, monkeypatch):
    stages = (
        Stage("data", "_fake_stage.a", "StageConfig", "teacher/base"),  # nested inside the next stage's folder
        Stage("prepare", "_fake_stage.b", "StageConfig", "teacher", ("data",)),
    )
    monkeypatch.setattr(pipeline, "STAGES", stages)
    pipeline.run(RunConfig(name="t", stages=["data", "prepare"]), tmp_path)
    (tmp_path / "teacher" / "stale_shard.jsonl").write_text("made by the old config")
    pipeline.run(RunConfig(name="t", stages=["data", "prepare"], prepare={"value": 3}), tmp_path)
    assert not (tmp_path / "teacher" / "stale_shard.jsonl").exists()
    assert (tmp_path / "teacher" / "base" / "out.txt").read_text() == "1"  # the nested stage survives
    assert (tmp_path / "teacher" / "out.txt").read_text() == "3"


def test_interrupted_stage_of_the_same_config_keeps_its_partial_outputs(tmp_path, fake_stages, monkeypatch):
    calls = fake_stages
    crash = {"on": True}
    seen = []

    def flaky(cfg, ctx):
        partial = ctx.stage_dir("prepare") / "partial.txt"
        seen.append(partial.exists())
        partial.write_text("half")
        if crash["on"]:
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(sys.modules["_fake_stage.b"], "run_stage", flaky)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(RunConfig(name="t"), tmp_path)
    crash["on"] = False
    pipeline.run(RunConfig(name="t"), tmp_path)
    assert seen == [False, True]  # the rerun found what the interrupted run had written
    assert json.loads((tmp_path / "prepared" / ".stage.json").read_text())["state"] == "done"


def test_optional_stages_run_only_when_named(tmp_path, fake_stages, monkeypatch):
    calls = fake_stages
    monkeypatch.setitem(sys.modules, "_fake_stage.f", _make_stage_module("_fake_stage.f", "fewshot", calls))
    stages = pipeline.STAGES + (Stage("fewshot", "_fake_stage.f", "StageConfig", "fewshot", ("prepare",), default=False),)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    result = pipeline.run(RunConfig(name="t"), tmp_path)
    assert result["stages"]["fewshot"] == "not selected" and "_fake_stage.f" not in calls
    assert not (tmp_path / "fewshot").exists()
    calls.clear()
    result = pipeline.run(RunConfig(name="t", stages=["data", "prepare", "fewshot"]), tmp_path)
    assert result["stages"]["fewshot"] == "done" and (tmp_path / "fewshot" / "out.txt").is_file()


def test_fewshot_and_active_are_pipeline_stages_on_the_prepared_cache(tmp_path):
    """A real run: data -> prepare -> fewshot -> active on a tiny phantom; each writes its results
    into its own folder, and a second run skips both as up to date."""
    from student.synthetic import TINY_MODEL

    cfg = RunConfig(
        name="t", stages=["data", "prepare", "fewshot", "active"],
        data={"phantom": {"n_studies": 240, "image_size": 64, "corpus_mb": 0.0}},
        prepare={"size": 32, "workers": 1},
        fewshot={"model": dict(TINY_MODEL), "ways": [2], "shots": [1], "queries": 2, "train_shots": 1,
                 "max_steps": 2, "eval_episodes": 6, "num_threads": 1},
        active={"model": dict(TINY_MODEL), "strategies": ["random", "entropy"], "seed_size": 10, "acquire": 10,
                "budget": 10, "max_steps": 2, "batch_size": 8, "num_threads": 1},
    )
    result = pipeline.run(cfg, tmp_path)
    assert result["stages"] == {"data": "done", "prepare": "done", "teacher_pretrain": "not selected",
                                "teacher_train": "not selected", "teacher_generate": "not selected",
                                "student": "not selected", "eval": "not selected", "explain": "not selected",
                                "fewshot": "done", "active": "done"}
    few = json.loads((tmp_path / "fewshot" / "results.json").read_text())
    assert [(r["ways"], r["shots"], r["episodes"]) for r in few["results"]] == [(2, 1, 6)]
    assert result["outputs"]["fewshot"]["results"] == few["results"]
    assert (tmp_path / "active" / "curve.csv").is_file()
    again = pipeline.run(cfg, tmp_path)
    assert again["stages"]["fewshot"] == pipeline.UP_TO_DATE and again["stages"]["active"] == pipeline.UP_TO_DATE
