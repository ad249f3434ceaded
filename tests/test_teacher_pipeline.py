"""The three teacher stages through the pipeline runner and the CLI, on a small phantom with
the real labeler (the phantom and the labeler are the subjects' real inputs here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill import pipeline
from kdistill.errors import DataError
from teacher import generate, pretrain, train
from teacher.cache import load_rationales

TINY = {"model_config": "llama_tiny", "max_steps": 30, "batch_size": 8, "lr": 1e-2, "warmup_steps": 3, "max_length": 256}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from kdistill.data.phantom import PhantomConfig, synthesize

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("phantom")
    synthesize(PhantomConfig(n_studies=16, image_size=64, corpus_mb=0.05, seed=3), root)
    return root


def test_three_teacher_stages_run_in_the_pipeline(phantom, tmp_path):
    run_cfg = pipeline.RunConfig(
        name="t", stages=["teacher_pretrain", "teacher_train", "teacher_generate"],
        teacher_pretrain=TINY,
        teacher_train={"max_steps": 5, "batch_size": 8, "lora_r": 4, "lora_alpha": 8, "cpu": True, "max_length": 256},
        teacher_generate={"data_root": str(phantom), "batch_size": 8, "max_new_tokens": 24, "cpu": True,
                          "max_retries": 1},
    )
    # the data stage is not selected: point the run at the phantom as its dataset root
    result = _run_with_root(run_cfg, tmp_path / "run", phantom)
    assert result["stages"]["teacher_generate"] == "done", result["stages"]
    base = tmp_path / "run" / "teacher" / "base"
    assert (base / "model.safetensors").is_file() and (base / "tokenizer.json").is_file()
    meta = json.loads((tmp_path / "run" / "teacher" / "teacher.json").read_text())
    assert meta["base_relative"] == "base"
    ds = load_rationales(tmp_path / "run" / "rationales")
    from kdistill.data.mimic import load_studies

    expected = [s.study_id for s in load_studies(phantom, splits=["train", "validate"])]
    assert ds["study_id"] == expected  # one row per train/validate study, in loader order
    assert all(t == meta["teacher_id"] for t in ds["teacher_id"])
    out = result["outputs"]["teacher_generate"]
    assert out["rows"] == len(expected) and 0.0 <= out["consistent_fraction"] <= 1.0


def _run_with_root(run_cfg, run_dir, root):
    original = pipeline.RunContext.data_root
    pipeline.RunContext.data_root = property(lambda self: Path(root))
    try:
        return pipeline.run(run_cfg, run_dir)
    finally:
        pipeline.RunContext.data_root = original


def test_cli_commands_write_the_three_folders(phantom, tmp_path, capsys):
    corpus = phantom / "corpus" / "corpus.jsonl"
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    assert pretrain.main(["--corpus", str(corpus), "--out", str(tmp_path / "base"), *overrides]) == 0
    assert train.main(["--base", str(tmp_path / "base"), "--data-root", str(phantom), "--out", str(tmp_path / "teacher"),
                       "max_steps=3", "batch_size=8", "cpu=true", "max_length=256"]) == 0
    assert generate.main(["--data-root", str(phantom), "--teacher", str(tmp_path / "teacher"),
                          "--out", str(tmp_path / "rationales"), "max_new_tokens=8", "cpu=true", "max_retries=0",
                          "limit=3"]) == 0
    assert len(load_rationales(tmp_path / "rationales")) == 3
    printed = capsys.readouterr().out
    assert '"rows": 3' in printed


def test_cli_reports_missing_inputs_as_data_errors(tmp_path):
    with pytest.raises(DataError, match="corpus file not found") as err:
        pretrain.main(["--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "b")])
    assert "missing.jsonl" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        train.main(["--base", str(tmp_path / "nope"), "--corpus", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "t")])
