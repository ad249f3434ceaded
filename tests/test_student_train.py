"""The student's accelerate training loop: learning, baselines, checkpoint, resume, bad input."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import student
from kdistill.scoring import save_thresholds
from kdistill import config as cfglib
from kdistill.errors import DataError
from student import checkpoint as ckpt
from student import train as train_mod
from kdistill.config import ConfigError
from student.synthetic import TINY_MODEL, add_topk, make_prepared, make_rationales, make_tokenizer
from teacher.cache import tokenizer_fingerprint
from student.train import NonFiniteLoss, StudentTrainConfig, train


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    prep = make_prepared(16, 8, size=32)
    return prep, make_tokenizer(prep), make_rationales(prep)


def _cfg(**kw):
    base = {"model": TINY_MODEL, "batch_size": 8, "max_steps": 4, "eval_every": 2, "save_every": 0,
            "warmup_steps": 1, "log_every": 1, "cpu": True, "lr": 3e-3, "num_threads": 1}
    return cfglib.from_dict(StudentTrainConfig, cfglib.merge(base, kw))


def _log(out):
    import csv

    with (out / "train_log.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_training_lowers_every_loss_term_and_writes_a_loadable_checkpoint(toy, tmp_path):
    prep, tok, rat = toy
    metrics = train(_cfg(max_steps=12, eval_every=6, warmup_steps=2), tmp_path, prep, tok, rat)
    rows = _log(tmp_path)
    first, last = rows[0], rows[-1]
    for term in ("loss", "cls", "rep", "kd", "emb"):
        assert float(last[term]) < float(first[term]), term
    for name in ("config.json", "model.safetensors", "tokenizer.json", "thresholds.json", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert metrics["steps"] == 12 and metrics["num_processes"] == 1
    assert metrics["rationales"]["missing_rationale"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["best_step"] == metrics["best_step"]

    model = student.load(tmp_path)
    th = json.loads((tmp_path / "thresholds.json").read_text())["thresholds"]
    images = np.asarray(prep["test"]["image"][:3], dtype=np.uint8)
    out = model.predict(images, max_new_tokens=8)
    assert out["probs"].shape == (3, 14) and out["maps"].shape == (3, 14, 32, 32)
    assert (out["decisions"] == (out["probs"] >= np.asarray(th, dtype=np.float32))).all()
    assert len(out["reports"]) == 3 and len(out["rationales"]) == 3


def test_reloaded_checkpoint_gives_identical_outputs(toy, tmp_path):
    prep, tok, _ = toy
    torch.manual_seed(3)
    cfg = cfglib.from_dict(student.StudentConfig, {**TINY_MODEL, "teacher_embed_dim": 16})
    model = student.create_student(cfg, tok).eval()
    ckpt.save_weights(model.cfg, model.state_dict(), tmp_path)
    ckpt.save_tokenizer(tok, tmp_path)
    save_thresholds(tmp_path, np.linspace(0.1, 0.9, 14))
    again = student.load(tmp_path)
    images = torch.rand(2, 1, 48, 48)  # another size: resized for the model, maps come back at 48x48
    a = model.predict(images, max_new_tokens=6)
    b = again.predict(images, max_new_tokens=6)
    assert np.array_equal(a["probs"], b["probs"]) and np.array_equal(a["maps"], b["maps"])
    assert a["reports"] == b["reports"] and a["rationales"] == b["rationales"]
    assert a["maps"].shape == (2, 14, 48, 48)
    assert np.allclose(again.thresholds.numpy(), np.linspace(0.1, 0.9, 14))


@pytest.mark.parametrize("weights", [
    {"rep": 0, "kd": 0, "emb": 0},   # classification only
    {"kd": 0, "emb": 0},             # + report, no distillation
    {"cls": 0, "rep": 0, "emb": 0},  # sequence-level KD alone
    {"cls": 0, "rep": 0, "kd": 0},   # feature KD alone
])
def test_each_baseline_switch_trains_only_its_terms(toy, tmp_path, weights):
    prep, tok, rat = toy
    needs_rat = weights.get("kd", 1) or weights.get("emb", 1)
    metrics = train(_cfg(max_steps=2, loss=weights), tmp_path, prep, tok, rat if needs_rat else None)
    assert metrics["steps"] == 2
    logged = {k for k, v in _log(tmp_path)[0].items() if v != "" and k in ("cls", "rep", "kd", "emb")}
    assert logged == {k for k in ("cls", "rep", "kd", "emb") if weights.get(k, 1)}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["teacher_embed_dim"] is not None) == bool(weights.get("emb", 1))


def test_explain_then_report_trains_on_the_rationale_layout_and_falls_back_without_kd(toy, tmp_path):
    from student.data import Collate

    prep, tok, rat = toy
    model_cfg = {**TINY_MODEL, "report_context": "rationale", "report_context_tokens": 6}
    train(_cfg(max_steps=3, model=model_cfg), tmp_path / "a", prep, tok, rat)
    model = student.load(tmp_path / "a")
    assert model.cfg.report_context == "rationale"
    out = model.predict(np.asarray(prep["test"]["image"][:2], dtype=np.uint8), max_new_tokens=8, rationales=False)
    assert len(out["reports"]) == 2 and out["rationales"] == []
    # the training batch writes each report after its study's rationale (the first 6 tokens)
    from student.data import StudyDataset, rationale_index

    index, _ = rationale_index(rat)
    ds = StudyDataset(prep["train"], model.tokens, index)
    batch = Collate(model.tokens, model.image_size, model.cfg.max_text_len, True)([ds[0], ds[1]])
    prompt = model.tokens.report_prompt(ds[0]["rationale_tokens"])
    assert batch["report_ids"][0, : len(prompt)].tolist() == prompt
    assert (batch["report_labels"][0, : len(prompt)] == -100).all()
    # without rationale distillation nothing teaches the rationale: reports from the image alone
    train(_cfg(max_steps=2, model=model_cfg, loss={"kd": 0, "emb": 0}), tmp_path / "b", prep, tok, None)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["report_context"] == "none"


def test_token_level_kd_aligns_the_teacher_topk_with_the_targets_and_trains(toy, tmp_path):
    from student.data import Collate, StudyDataset, rationale_index
    from student.text import TokenSpec

    prep, tok, rat = toy
    rat_k = add_topk(rat, tok, k=4)
    as_written = {**TINY_MODEL, "rationale_order": "as_written"}
    index, _ = rationale_index(rat_k, with_topk=True)
    spec = TokenSpec(tok, "<report>", "<rationale>")
    ds = StudyDataset(prep["train"], spec, index)
    start = len(spec.prompts["rationale"])
    for max_len in (48, start + 4):  # the second cuts every rationale after 3 tokens
        batch = Collate(spec, (32, 32), max_len, True)([ds[i] for i in range(4)])
        labels, mask = batch["rationale_labels"], batch["rationale_topk_mask"]
        # the stand-in teacher's top-1 is the true next token: equal wherever the mask is set
        assert (batch["rationale_topk_ids"][..., 0][mask] == labels[mask]).all()
        assert mask[:, :start].sum() == 0
        cut = torch.tensor([len(ds[i]["rationale_tokens"]) > max_len - start - 1 for i in range(4)])
        assert cut.any() and (cut.all() or max_len == 48)
        # an eos that ends a cut target is not what the teacher saw there: no KD on it
        eos_kd = (mask & (labels == spec.eos_id)).any(1)
        assert (eos_kd == ~cut).all()
        assert int(mask.sum()) == int((labels != -100).sum()) - int(cut.sum())
    metrics = train(_cfg(max_steps=6, lr=1e-2, model=as_written, loss={"kd": 0, "emb": 0, "tok": 1.0}), tmp_path / "a", prep, tok, rat_k)
    assert metrics["steps"] == 6
    log = _log(tmp_path / "a")
    assert float(log[-1]["tok"]) < float(log[0]["tok"]) and all(r["kd"] == "" for r in log)
    with pytest.raises(DataError, match="no teacher top-k"):
        train(_cfg(max_steps=1, model=as_written, loss={"tok": 1.0}), tmp_path / "b", prep, tok, rat)
    with pytest.raises(ConfigError, match="as_written"):
        train(_cfg(max_steps=1, model={**TINY_MODEL, "rationale_order": "conclusion_first"}, loss={"tok": 1.0}),
              tmp_path / "c", prep, tok, rat_k)


@pytest.mark.parametrize("augmented", [False, True])
def test_resume_continues_the_same_schedule_to_the_same_weights(toy, tmp_path, augmented):
    prep, tok, rat = toy
    cfg = _cfg(max_steps=6, save_every=3, keep_checkpoints=3, eval_every=3, augment={"enabled": augmented})
    train(cfg, tmp_path / "a", prep, tok, rat)
    # an interrupted run: only the step-3 state exists, then --resume
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step_3", tmp_path / "b" / "checkpoints" / "step_3")
    metrics = train(cfg, tmp_path / "b", prep, tok, rat, resume=True)
    assert metrics["resumed_from"].endswith("step_3") and metrics["steps"] == 6
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step_6" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step_6" / "model.safetensors"))
    w3 = load_file(str(tmp_path / "a" / "checkpoints" / "step_3" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    assert any(not torch.equal(wa[k], w3[k]) for k in wa)  # steps 4-6 did change the weights
    rows = _log(tmp_path / "b")
    assert [int(r["step"]) for r in rows] == [4, 5, 6]


def test_missing_rationales_are_counted_or_refused(toy, tmp_path):
    prep, tok, rat = toy
    drop = set(prep["train"]["study_id"][:3])
    partial = rat.filter(lambda r: r["study_id"] not in drop)
    metrics = train(_cfg(max_steps=1), tmp_path / "a", prep, tok, partial)
    assert metrics["rationales"]["missing_rationale"] == 3
    assert metrics["rationales"]["with_rationale"] == 13
    with pytest.raises(DataError, match="3 of 16 training studies have no rationale"):
        train(_cfg(max_steps=1, require_rationales=True), tmp_path / "b", prep, tok, partial)
    # rationales the labeler found inconsistent with the study's labels are left out too (by default)
    wrong = set(prep["train"]["study_id"][3:5])
    flagged = partial.map(lambda r: {"consistent": r["study_id"] not in wrong})
    metrics = train(_cfg(max_steps=1), tmp_path / "c", prep, tok, flagged)
    assert metrics["rationales"]["missing_rationale"] == 5
    assert metrics["rationales"]["inconsistent_left_out_in_cache"] == 2
    metrics = train(_cfg(max_steps=1, consistent_rationales_only=False), tmp_path / "d", prep, tok, flagged)
    assert metrics["rationales"]["missing_rationale"] == 3


def test_a_cache_made_for_another_tokenizer_is_refused(toy, tmp_path):
    prep, tok, rat = toy
    cache = tmp_path / "rationales"
    rat.save_to_disk(str(cache / "dataset"))
    (cache / "meta.json").write_text(json.dumps({"tokenizer_hash": "0123456789abcdef"}))
    with pytest.raises(DataError, match="another tokenizer"):
        train(_cfg(max_steps=1), tmp_path / "a", prep, tok, rat, rationale_path=cache)
    # the right hash passes; so does a teacher folder whose teacher_id matches the rows
    (cache / "meta.json").write_text(json.dumps({"tokenizer_hash": tokenizer_fingerprint(tok)}))
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "teacher.json").write_text(json.dumps({"teacher_id": "toy-teacher"}))
    m = train(_cfg(max_steps=1), tmp_path / "b", prep, tok, rat, rationale_path=cache, tokenizer_dir=teacher)
    assert m["tokenizer_check"] == "tokenizer_hash+teacher_id"
    (teacher / "teacher.json").write_text(json.dumps({"teacher_id": "another-teacher"}))
    (cache / "meta.json").unlink()
    with pytest.raises(DataError, match="another-teacher"):
        train(_cfg(max_steps=1), tmp_path / "c", prep, tok, rat, rationale_path=cache, tokenizer_dir=teacher)


def test_nan_loss_stops_with_step_and_studies_and_keeps_the_best_checkpoint(toy, tmp_path, monkeypatch):
    prep, tok, rat = toy
    real = train_mod.student_loss
    calls = {"train": 0}

    def poisoned(out, batch, weights, scales=None):
        loss, terms = real(out, batch, weights, scales)
        if torch.is_grad_enabled():  # training steps only, not validation
            calls["train"] += 1
            if calls["train"] == 3:
                loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(train_mod, "student_loss", poisoned)
    with pytest.raises(NonFiniteLoss) as err:
        train(_cfg(max_steps=6, eval_every=2), tmp_path, prep, tok, rat)
    msg = str(err.value)
    assert "step 3" in msg and "step 2" in msg  # the failing step, and the kept checkpoint's step
    assert any(sid in msg for sid in prep["train"]["study_id"])
    assert (tmp_path / "model.safetensors").is_file()


_LAUNCHED = r'''
import json, os, sys
import datasets, torch
from transformers import AutoTokenizer
from kdistill import config as cfglib
from student.train import StudentTrainConfig, train
data, tok_dir, out, cfg_json = sys.argv[1:5]
torch.set_num_threads(1)
cfg = cfglib.from_dict(StudentTrainConfig, json.loads(cfg_json))
metrics = train(cfg, out, datasets.load_from_disk(data), AutoTokenizer.from_pretrained(tok_dir), None)
rank = int(os.environ["RANK"])
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump({"steps": metrics["steps"], "num_processes": metrics["num_processes"],
               "images": metrics["train_images_seen"]}, fh)
'''


def test_two_cpu_processes_average_gradients_like_one_process_on_the_whole_batch(toy, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    prep, tok, _ = toy
    prep.save_to_disk(str(tmp_path / "data"))
    tok.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "launched.py").write_text(_LAUNCHED)
    # Classification only with every label kept: the loss is a plain mean over the batch, so the
    # mean of two half-batch gradients (DDP) equals the gradient on the whole batch.
    common = {"model": TINY_MODEL, "max_steps": 3, "eval_every": 3, "save_every": 3, "warmup_steps": 1,
              "cpu": True, "lr": 3e-3, "uncertain": "zeros", "blank": "zeros", "loss": {"rep": 0, "kd": 0, "emb": 0}}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(tmp_path / "launched.py"), str(tmp_path / "data"), str(tmp_path / "tok"),
           str(tmp_path / "ddp"), json.dumps({**common, "batch_size": 4})]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["num_processes"] == 2 and r["steps"] == 3 for r in ranks)  # both ranks stepped
    assert ranks[0]["images"] == 3 * 2 * 4
    assert (tmp_path / "ddp" / "model.safetensors").is_file()  # one checkpoint, from the main process

    train(cfglib.from_dict(StudentTrainConfig, {**common, "batch_size": 8}), tmp_path / "one", prep, tok, None)
    w2 = load_file(str(tmp_path / "ddp" / "checkpoints" / "step_3" / "model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "step_3" / "model.safetensors"))
    w0 = student.create_student(cfglib.from_dict(student.StudentConfig, TINY_MODEL), tok).state_dict()
    # Control: one process seeing only half the data per step lands far from both.
    train(cfglib.from_dict(StudentTrainConfig, {**common, "batch_size": 4}), tmp_path / "half", prep, tok, None)
    wh = load_file(str(tmp_path / "half" / "checkpoints" / "step_3" / "model.safetensors"))
    gap = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    control = max(float((w1[k] - wh[k]).abs().max()) for k in w1)
    moved = max(float((w1[k] - w0[k]).abs().max()) for k in w1)
    # Adam turns float-summation noise into ~1e-5 differences; missing averaging gives ~lr (3e-3).
    assert gap < 2e-4, gap
    assert control > 10 * gap and control > 1e-3, (control, gap)
    assert moved > 1e-3  # training did change the weights, so the comparison means something


def test_command_line_trains_from_folders_with_yaml_and_overrides(toy, tmp_path, capsys):
    prep, tok, rat = toy
    prep.save_to_disk(str(tmp_path / "prepared" / "dataset"))
    tok.save_pretrained(str(tmp_path / "teacher"))
    rat.save_to_disk(str(tmp_path / "rationales" / "dataset"))
    cfg_yaml = tmp_path / "student.yaml"
    cfg_yaml.write_text(json.dumps({"student": {"model": TINY_MODEL, "batch_size": 8, "max_steps": 3,
                                                "eval_every": 3, "cpu": True, "num_threads": 1}}))
    rc = train_mod.main(["--prepared", str(tmp_path / "prepared"), "--tokenizer", str(tmp_path / "teacher"),
                         "--rationales", str(tmp_path / "rationales"), "--out", str(tmp_path / "out"),
                         "--config", str(cfg_yaml), "max_steps=2", "loss.emb=0"])
    assert rc == 0
    saved = json.loads((tmp_path / "out" / "training_config.json").read_text())
    assert saved["max_steps"] == 2 and saved["loss"]["emb"] == 0.0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 2
    assert "val micro-AUC" in capsys.readouterr().out
    with pytest.raises(cfglib.ConfigError, match="max_step"):
        train_mod.main(["--prepared", "x", "--tokenizer", "y", "--out", "z", "max_step=2"])


def test_images_of_the_wrong_size_are_resized_and_counted(toy, tmp_path):
    _, tok, _ = toy
    prep = make_prepared(16, 8, size=40)  # the model takes 32x32
    metrics = train(_cfg(max_steps=2, loss={"kd": 0, "emb": 0}), tmp_path, prep, tok, None)
    assert metrics["resized_images"] == {"train": 16, "validate": 8}
    assert metrics["resized_image_reads"] == 2 * 8


def test_pipeline_stage_reads_the_upstream_folders(toy, tmp_path):
    from kdistill.pipeline import RunContext

    prep, tok, rat = toy
    ctx = RunContext(run_dir=tmp_path, name="t", seed=3)
    prep.save_to_disk(str(ctx.stage_dir("prepare") / "dataset"))
    tok.save_pretrained(str(ctx.stage_dir("teacher_train")))
    rat.save_to_disk(str(ctx.stage_dir("teacher_generate") / "dataset"))
    ctx.stage_dir("student").mkdir()
    summary = train_mod.run_stage(_cfg(max_steps=2), ctx)
    assert summary["steps"] == 2 and summary["missing_rationales"] == 0
    assert student.load(ctx.stage_dir("student")).cfg.teacher_embed_dim == 16
    assert json.loads((ctx.stage_dir("student") / "training_config.json").read_text())["seed"] == 3


def test_gradient_accumulation_matches_one_big_batch(toy, tmp_path):
    prep, tok, _ = toy
    # Classification only, every label kept: the loss is a plain mean, so two accumulated
    # half-batches give the gradient of the whole batch.
    common = {"max_steps": 2, "save_every": 2, "eval_every": 2, "uncertain": "zeros", "blank": "zeros",
              "loss": {"rep": 0, "kd": 0, "emb": 0}}
    train(_cfg(batch_size=4, grad_accum=2, **common), tmp_path / "acc", prep, tok, None)
    train(_cfg(batch_size=8, **common), tmp_path / "big", prep, tok, None)
    train(_cfg(batch_size=4, **common), tmp_path / "small", prep, tok, None)
    w = {k: load_file(str(tmp_path / k / "checkpoints" / "step_2" / "model.safetensors")) for k in ("acc", "big", "small")}
    gap = max(float((w["acc"][k] - w["big"][k]).abs().max()) for k in w["big"])
    control = max(float((w["small"][k] - w["big"][k]).abs().max()) for k in w["big"])
    assert gap < 1e-4 and control > 10 * gap, (gap, control)


def test_bf16_mixed_precision_trains_on_cpu(toy, tmp_path):
    from accelerate.state import AcceleratorState

    prep, tok, rat = toy
    # accelerate fixes the precision once per process; a real run is its own process, here the
    # other tests' fp32 state is cleared before and after (accelerate's own tests do the same).
    AcceleratorState._reset_state()
    try:
        metrics = train(_cfg(max_steps=2, mixed_precision="bf16"), tmp_path, prep, tok, rat)
    finally:
        AcceleratorState._reset_state()
    assert metrics["mixed_precision"] == "bf16" and metrics["steps"] == 2
    assert np.isfinite(metrics["validation"]["loss"])


def test_a_fresh_run_in_a_used_folder_drops_the_old_runs_states(toy, tmp_path):
    prep, tok, _ = toy
    cls_only = {"loss": {"rep": 0, "kd": 0, "emb": 0}}
    train(_cfg(max_steps=4, save_every=2, keep_checkpoints=5, **cls_only), tmp_path, prep, tok, None)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"step_2", "step_4"}
    train(_cfg(max_steps=2, save_every=1, keep_checkpoints=1, **cls_only), tmp_path, prep, tok, None)
    # the old step_4 must not survive as "newest" and push out the new run's own state
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"step_2"}
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2


def test_loops_of_other_precisions_run_one_after_another_in_one_process():
    """``kdistill run`` trains the teacher (float32) and then a bf16 student in one process:
    accelerate refuses a second Accelerator of another precision unless its state is dropped."""
    from kdistill.training import new_accelerator

    first = new_accelerator(cpu=True, mixed_precision="no")
    assert first.mixed_precision == "no"
    second = new_accelerator(cpu=True, mixed_precision="bf16")
    assert second.mixed_precision == "bf16" and second.num_processes == 1
    assert new_accelerator(cpu=True, mixed_precision="fp16").mixed_precision == "no"  # CPUs autocast bf16 only


def test_bf16_if_native_reads_the_cpu_flags(tmp_path):
    """bf16 only where the CPU computes it (AVX512-BF16 or AMX): emulated bf16 is slower than fp32."""
    from kdistill.training import native_bf16, new_accelerator

    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {}\nbogomips\t: 5600\n"
    with_bf16, without, amx = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with_bf16.write_text(flags.format("avx512_bf16 avx512_vnni"))
    without.write_text(flags.format("avx512_vnni avx512_vbmi"))
    amx.write_text(flags.format("amx_tile amx_bf16"))
    assert native_bf16(cpu=True, cpuinfo=with_bf16) and native_bf16(cpu=True, cpuinfo=amx)
    assert not native_bf16(cpu=True, cpuinfo=without)
    assert not native_bf16(cpu=True, cpuinfo=tmp_path / "missing")  # unknown: the safe choice
    # on this machine the accelerator takes whichever the real flags say
    acc = new_accelerator(cpu=True, mixed_precision="bf16_if_native")
    assert acc.mixed_precision == ("bf16" if native_bf16(cpu=True) else "no")
    new_accelerator(cpu=True, mixed_precision="no")  # leave fp32 for the tests after this one
