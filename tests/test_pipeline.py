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
