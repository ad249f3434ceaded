"""``kdistill run`` as a careless user drives it: outputs deleted or truncated behind its back, a
run folder that is someone's own folder, a student stage killed mid-way, two runs on one folder at
once, and the same config run twice (the same figures, and what they depend on recorded)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdistill import pipeline
from kdistill.errors import DataError
from kdistill.pipeline import RunConfig
from test_pipeline import fake_stages  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- markers (stand-in stages)

def test_a_done_marker_is_trusted_only_while_its_outputs_are_as_recorded(tmp_path, fake_stages, caplog):  # noqa: F811
    calls = fake_stages
    pipeline.run(RunConfig(name="t"), tmp_path)
    marker = json.loads((tmp_path / "prepared" / ".stage.json").read_text())
    assert marker["outputs"] == {"out.txt": {"size": 1, "sha256": marker["outputs"]["out.txt"]["sha256"]}}
    (tmp_path / "prepared" / "notes.txt").write_text("a file added later changes nothing")
    calls.clear()
    pipeline.run(RunConfig(name="t"), tmp_path)
    assert calls == []
    (tmp_path / "prepared" / "out.txt").unlink()  # deleted behind the tool's back
    calls.clear()
    with caplog.at_level("WARNING", logger="kdistill.run"):
        result = pipeline.run(RunConfig(name="t"), tmp_path)
    assert calls == ["_fake_stage.b"] and result["stages"]["prepare"] == "done"
    assert "stage prepare: its outputs are not as it left them (out.txt is missing)" in caplog.text
    assert result["stages"]["eval"] == pipeline.UP_TO_DATE  # same config upstream: downstream is kept
    (tmp_path / "eval" / "out.txt").write_text("")  # truncated
    calls.clear()
    assert pipeline.run(RunConfig(name="t"), tmp_path)["stages"]["eval"] == "done" and calls == ["_fake_stage.c"]
    # a marker of an older kdistill (no record of its files) is not trusted either
    blob = json.loads((tmp_path / "data" / ".stage.json").read_text())
    del blob["outputs"]
    (tmp_path / "data" / ".stage.json").write_text(json.dumps(blob))
    calls.clear()
    pipeline.run(RunConfig(name="t"), tmp_path)
    assert calls == ["_fake_stage.a"]


def test_a_run_folder_that_is_not_one_is_refused_and_left_unchanged(tmp_path, fake_stages, capsys):  # noqa: F811
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.yaml").write_text("my: own config\n")
    with pytest.raises(DataError, match=r"mine: exists, is not empty \(config.yaml\) and is not a kdistill run folder"):
        pipeline.run(RunConfig(name="t"), user)
    assert [p.name for p in user.iterdir()] == ["config.yaml"]
    assert (user / "config.yaml").read_text() == "my: own config\n"
    pipeline.run(RunConfig(name="t"), user, overwrite=True)
    assert (user / pipeline.RUN_MARKER).is_file()
    pipeline.run(RunConfig(name="t"), user)  # now it is one
    # a run folder made before the run marker existed is recognised by its stage markers
    (user / pipeline.RUN_MARKER).unlink()
    assert pipeline.run(RunConfig(name="t"), user)["stages"]["data"] == pipeline.UP_TO_DATE


# ----------------------------------------------------------------------------- real stages

STUDENT = {
    "model": {"vision_model": "kdistill-vit-tiny",
              "vision_overrides": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
              "decoder_width": 32, "decoder_heads": 2, "text_layers": 1, "multimodal_layers": 1, "max_text_len": 24,
              "head_width": 32, "head_heads": 2, "head_layers": 1},
    "loss": {"kd": 0, "emb": 0}, "batch_size": 4, "max_steps": 4, "eval_every": 2, "save_every": 2,
    "warmup_steps": 1, "cpu": True, "num_threads": 1, "tensorboard": False,
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from student.synthetic import make_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer().save_pretrained(str(folder))
    return folder


def _tiny(tokenizer_dir, stages=("data", "prepare", "student")) -> dict:
    return {"name": "tiny", "seed": 0, "stages": list(stages),
            "data": {"phantom": {"n_studies": 24, "image_size": 64, "corpus_mb": 0}},
            "prepare": {"size": 32, "workers": 1},
            "student": {**STUDENT, "tokenizer": str(tokenizer_dir)},
            "eval": {"n_bootstrap": 5, "noise_sigmas": [0.05], "batch_size": 8}}


def test_a_killed_student_stage_resumes_from_its_saved_step(tmp_path, tokenizer_dir, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from kdistill import config as cfglib
    from kdistill.training import Checkpoints

    torch.set_num_threads(1)
    cfg = cfglib.from_dict(RunConfig, _tiny(tokenizer_dir))
    pipeline.run(cfg, tmp_path / "whole")
    save = Checkpoints.save

    def killed_after_step_2(self, accelerator, step, state):
        path = save(self, accelerator, step, state)
        if step == 2:
            raise KeyboardInterrupt("killed after saving step 2")
        return path

    monkeypatch.setattr(Checkpoints, "save", killed_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "student" / ".stage.json").read_text())["state"] == "running"
    monkeypatch.setattr(Checkpoints, "save", save)
    result = pipeline.run(cfg, tmp_path / "killed")
    assert result["stages"] == {**result["stages"], "data": pipeline.UP_TO_DATE, "prepare": pipeline.UP_TO_DATE,
                                "student": "done"}
    metrics = json.loads((tmp_path / "killed" / "student" / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoints/step_2") and metrics["steps"] == 4
    whole = load_file(str(tmp_path / "whole" / "student" / "checkpoints" / "step_4" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "student" / "checkpoints" / "step_4" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.allclose(whole[name], resumed[name], atol=1e-6), name


def _run(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "kdistill.cli", "run", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


_TIMING = ("wall_s", "images_per_s")


def test_two_runs_on_one_folder_one_refuses_and_the_other_equals_a_lone_run(tmp_path, tokenizer_dir):
    import torch

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny(tokenizer_dir, ("data", "prepare", "student", "eval"))))
    shared, lone = tmp_path / "shared", tmp_path / "lone"
    procs = [_run(config, shared), _run(config, shared), _run(config, lone)]
    results = [(p.pid, p.wait(timeout=600), *p.communicate()) for p in procs]
    (pid_a, rc_a, _, err_a), (pid_b, rc_b, _, err_b), (_, rc_lone, _, err_lone) = results
    assert rc_lone == 0, err_lone[-2000:]
    assert sorted([rc_a, rc_b]) == [0, 1], (err_a[-2000:], err_b[-2000:])
    winner, loser_err = (pid_a, err_b) if rc_a == 0 else (pid_b, err_a)
    refusal = loser_err.strip().splitlines()[-1]
    assert refusal.startswith(f"kdistill run: error: {shared}: run folder is in use by another kdistill process: "
                              f"pid {winner} on host ")
    assert ", since 20" in refusal and "Traceback" not in loser_err
    # the winner's run is the lone run's: same weights, same metrics
    assert (shared / "student" / "model.safetensors").read_bytes() == (lone / "student" / "model.safetensors").read_bytes()
    assert (json.loads((shared / "eval" / "metrics.json").read_text())
            == json.loads((lone / "eval" / "metrics.json").read_text()))

    def student_metrics(run):
        blob = json.loads((run / "student" / "metrics.json").read_text())
        return {k: v for k, v in blob.items() if k not in _TIMING}

    assert student_metrics(shared) == student_metrics(lone)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (shared, lone)]
    assert summaries[0]["stages"] == summaries[1]["stages"] and summaries[0]["stages"]["eval"] == "done"
    env = summaries[0]["environment"]
    assert env == summaries[1]["environment"]
    assert env["libraries"]["torch"] == torch.__version__
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_num_threads"] >= 1 and env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert not (shared / ".kdistill.lock").exists() and not (shared / "student" / ".kdistill.lock").exists()
