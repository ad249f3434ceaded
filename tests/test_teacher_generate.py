"""Rationale generation: dedup, batched == one-by-one, resume after SIGKILL, two processes,
consistency flags and retries, cache metadata, bad input, OOM, the vllm switch."""
from __future__ import annotations

import copy
import math
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from test_teacher_toy import stub_label_reports, toy_studies, write_toy_corpus  # noqa: E402

from kdistill.config import ConfigError  # noqa: E402
from kdistill.errors import DataError  # noqa: E402
from kdistill.labels import FINDING_INDEX, FINDINGS  # noqa: E402
from teacher import cache  # noqa: E402
from teacher import checked  # noqa: E402
from teacher import generate as gen  # noqa: E402
from teacher.modeling import load_teacher  # noqa: E402
from teacher.pretrain import TeacherPretrainConfig as PretrainConfig  # noqa: E402
from teacher.pretrain import pretrain  # noqa: E402
from teacher.train import TeacherTrainConfig as TrainConfig  # noqa: E402
from teacher.train import train  # noqa: E402

REPO = TESTS.parent


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher that has learned the toy corpus well enough to write real sentences."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher_gen")
    corpus = write_toy_corpus(root / "corpus.jsonl", n_rationale=150)
    pretrain(PretrainConfig(model_config="llama_tiny", max_steps=150, batch_size=16, lr=1e-2, warmup_steps=10),
             corpus, root / "base", label_fn=stub_label_reports)
    train(TrainConfig(max_steps=20, batch_size=16, lr=5e-3, lora_r=4, lora_alpha=8, save_every=0, cpu=True),
          root / "base", corpus, root / "teacher")
    return root / "teacher"


def _cfg(**kw):
    return gen.TeacherGenerateConfig(**{**dict(batch_size=4, max_new_tokens=40, cpu=True, max_retries=0), **kw})


def _run(studies, teacher_dir, out, label_fn=stub_label_reports, **kw):
    return gen.generate_rationales(studies, teacher_dir, out, _cfg(**kw), label_fn=label_fn)


def _rows(out):
    return cache.load_rationales(out).to_list()


def test_continuous_batching_equals_generate_one_by_one(teacher_dir):
    model, tok, _ = load_teacher(teacher_dir)
    tok.padding_side = "left"
    prompts = sorted({gen.prompt_for_study(s).text for s in toy_studies(10)}, key=len)
    batched = gen.HFBackend(model, tok, _cfg(batch_size=3), "cpu")  # fewer slots than prompts: refills
    assert batched.continuous
    out_b = batched.generate(prompts, sample=False)
    # the reference: transformers' own generate, one prompt at a time
    ref = []
    for p in prompts:
        ids = torch.tensor([batched.prompt_ids(p)])
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
        ref.append(new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new)
    assert [g.ids for g in out_b] == ref
    assert [g.text for g in out_b] == [tok.decode(r, skip_special_tokens=True).strip() for r in ref]
    assert sum(len(g.ids) > 5 for g in out_b) == len(prompts)  # real sentences, not empty strings
    assert any(len(g.ids) == 40 for g in out_b) and any(len(g.ids) < 40 for g in out_b)  # both ways to end
    # embeddings taken while decoding == a separate forward pass over prompt + rationale
    emb = batched.embed(prompts, [g.ids for g in out_b])
    for g, a in zip(out_b, emb):
        assert a.dtype == np.float32 and a.shape == (model.config.hidden_size,)
        assert g.embedding.dtype == np.float32
        np.testing.assert_allclose(g.embedding, a, atol=1e-5)
    # the model.generate path (beams, other architectures) gives the same greedy tokens
    fallback = gen.HFBackend(model, tok, _cfg(batch_size=4), "cpu")
    fallback.continuous = False
    assert [g.ids for g in fallback.generate(prompts, sample=False)] == ref


def test_sampling_is_seeded_per_row_whatever_the_batch(teacher_dir):
    model, tok, _ = load_teacher(teacher_dir)
    prompts = sorted({gen.prompt_for_study(s).text for s in toy_studies(8)})
    seeds = list(range(100, 100 + len(prompts)))
    wide = gen.HFBackend(model, tok, _cfg(batch_size=8, top_p=0.9), "cpu").generate(
        prompts, sample=True, seeds=seeds, temperature=1.0)
    narrow = gen.HFBackend(model, tok, _cfg(batch_size=2, top_p=0.9), "cpu").generate(
        prompts[::-1], sample=True, seeds=seeds[::-1], temperature=1.0)
    assert [g.ids for g in wide] == [g.ids for g in narrow[::-1]]
    greedy = gen.HFBackend(model, tok, _cfg(batch_size=8), "cpu").generate(prompts, sample=False)
    assert [g.ids for g in wide] != [g.ids for g in greedy]  # it did sample
    other = gen.HFBackend(model, tok, _cfg(batch_size=8, top_p=0.9), "cpu").generate(
        prompts, sample=True, seeds=[s + 1 for s in seeds], temperature=1.0)
    assert [g.ids for g in wide] != [g.ids for g in other]


def test_identical_prompts_are_generated_once_and_every_study_gets_its_row(teacher_dir, tmp_path, monkeypatch):
    studies = toy_studies(6)
    twins = [copy.deepcopy(s) for s in studies[:3]]
    for i, s in enumerate(twins):
        s.study_id = str(60000000 + i)
    seen: list[str] = []
    real = gen.HFBackend.stream

    def counting(self, prompts, sample, seeds=None, temperature=1.0):
        seen.extend(prompts)
        return real(self, prompts, sample, seeds, temperature)

    monkeypatch.setattr(gen.HFBackend, "stream", counting)
    summary = _run(studies + twins, teacher_dir, tmp_path / "r")
    unique = {gen.prompt_for_study(s).text for s in studies}
    assert sorted(seen) == sorted(unique)  # each distinct prompt decoded exactly once
    rows = _rows(tmp_path / "r")
    assert [r["study_id"] for r in rows] == [s.study_id for s in studies + twins]  # input order
    by_id = {r["study_id"]: r for r in rows}
    for s, t in zip(studies[:3], twins):
        assert by_id[s.study_id]["rationale"] == by_id[t.study_id]["rationale"]
    assert summary["rows"] == 9 and summary["unique_prompts_this_run"] == len(unique)
    assert set(rows[0]) == set(cache.COLUMNS)


def test_cache_schema_and_metadata(teacher_dir, tmp_path):
    _run(toy_studies(3), teacher_dir, tmp_path / "r")
    ds = cache.load_rationales(tmp_path / "r")
    assert ds.features["embedding"].feature.dtype == "float32"
    assert ds.features["consistent"].dtype == "bool"
    meta = json.loads((tmp_path / "r" / "cache.json").read_text())
    teacher = json.loads((teacher_dir / "teacher.json").read_text())
    assert meta["teacher_id"] == teacher["teacher_id"] == ds[0]["teacher_id"]
    assert meta["adapter_hash"] == teacher["adapter_hash"]
    assert meta["prompt_version"] == gen.PROMPT_VERSION
    assert meta["gen_config_hash"] == gen.gen_config_hash(_cfg()) == ds[0]["gen_config_hash"]
    assert meta["gen_config"]["max_new_tokens"] == 40


def test_topk_columns_equal_a_teacher_forced_forward_over_the_student_tokens(teacher_dir, tmp_path):
    k = 5
    studies = toy_studies(4)
    _run(studies, teacher_dir, tmp_path / "r", topk=k)
    ds = cache.load_rationales(tmp_path / "r")
    assert ds.features["topk_logprobs"].feature.feature.dtype == "float32"
    model, tok, _ = load_teacher(teacher_dir, device=torch.device("cpu"))
    for row in ds.to_list():
        # the reference: one unpadded forward over [bos] prompt, the rationale re-encoded, eos
        rationale = tok(row["rationale"], add_special_tokens=False)["input_ids"]
        seq = [tok.bos_token_id] + tok.encode(row["prompt"], add_special_tokens=False) + rationale + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        want = logp[len(seq) - len(rationale) - 2:-1].topk(k, dim=-1)
        ids, lp = np.asarray(row["topk_ids"]), np.asarray(row["topk_logprobs"])
        assert ids.shape == lp.shape == (len(rationale) + 1, k)
        np.testing.assert_allclose(lp, want.values.numpy(), atol=1e-4)
        assert (ids[:, 0] == want.indices[:, 0].numpy()).mean() > 0.95  # ties aside, the same tokens
        # row j is the distribution for token j: the token greedy decoding chose is among row j's
        # top k, and mostly its top 1 (not always: the generated first token carries the space
        # that strip() removed, so the re-encoded context differs a little from the decoded one);
        # rows shifted by one fail both
        tokens = np.asarray(rationale[1:])
        assert (ids[1:-1] == tokens[:, None]).any(1).mean() > 0.95
        assert (ids[1:-1, 0] == tokens).mean() > 0.85
        assert (ids[:-2, 0] == tokens).mean() < 0.5
    assert json.loads((tmp_path / "r" / "cache.json").read_text())["gen_config"]["topk"] == k


def test_topk_is_off_by_default_and_leaves_old_hashes_alone(teacher_dir, tmp_path):
    _run(toy_studies(2), teacher_dir, tmp_path / "r")
    ds = cache.load_rationales(tmp_path / "r")
    assert not set(cache.TOPK_COLUMNS) & set(ds.column_names)
    old = gen.cfglib.config_hash({**{key: getattr(_cfg(), key) for key in gen.GEN_KEYS}, "prompt_version": gen.PROMPT_VERSION})
    assert gen.gen_config_hash(_cfg()) == old != gen.gen_config_hash(_cfg(topk=4))
    with pytest.raises(ValueError, match="topk"):
        _cfg(topk=-1).validate()


def test_changed_generation_config_is_refused_unless_forced(teacher_dir, tmp_path):
    studies = toy_studies(3)
    _run(studies, teacher_dir, tmp_path / "r")
    with pytest.raises(DataError, match="different teacher or generation config") as err:
        _run(studies, teacher_dir, tmp_path / "r", max_new_tokens=20)
    assert "cache.json" in str(err.value) and "--force" in str(err.value)
    summary = _run(studies, teacher_dir, tmp_path / "r", max_new_tokens=20, force=True)
    assert summary["resumed_rows"] == 0 and summary["rows"] == 3
    assert json.loads((tmp_path / "r" / "cache.json").read_text())["gen_config"]["max_new_tokens"] == 20


def test_rerun_with_the_same_config_skips_every_written_study(teacher_dir, tmp_path, monkeypatch):
    studies = toy_studies(4)
    _run(studies, teacher_dir, tmp_path / "r")
    first = _rows(tmp_path / "r")
    monkeypatch.setattr(gen.HFBackend, "generate", lambda *a, **k: pytest.fail("nothing left to generate"))
    summary = _run(studies, teacher_dir, tmp_path / "r")
    assert summary["resumed_rows"] == 4 and _rows(tmp_path / "r") == first


def _labels_for(text_to_findings):
    """A label_fn answering from a table: rationale text -> positive findings."""
    def label_fn(texts):
        out = np.full((len(texts), len(FINDINGS)), np.nan, dtype=np.float32)
        for i, t in enumerate(texts):
            for name in text_to_findings(t):
                out[i, FINDING_INDEX[name]] = 1.0
        return out
    return label_fn


def test_consistency_flags_and_sampled_retries(teacher_dir, tmp_path, monkeypatch):
    studies = toy_studies(8)
    positives = {s.study_id: [FINDINGS[i] for i, v in enumerate(s.labels) if v == 1.0 and FINDINGS[i] != "No Finding"]
                 for s in studies}
    calls = {"n": 0}
    real = gen.HFBackend.stream

    def tagged(self, prompts, sample, seeds=None, temperature=1.0):
        calls["n"] += 1
        for j, g in real(self, prompts, sample, seeds, temperature):
            yield j, g._replace(text=("SAMPLED " if sample else "GREEDY ") + g.text)

    monkeypatch.setattr(gen.HFBackend, "stream", tagged)
    prompt_of = {gen.prompt_for_study(s).text: s.study_id for s in studies}
    del prompt_of  # prompts are unique here; the label_fn works from the text alone

    # greedy rationales always miss every finding; sampled ones name exactly the study's findings
    by_text: dict[str, list[str]] = {}

    def findings_of(text):
        return by_text.get(text, [])

    label_fn = _labels_for(findings_of)
    orig_check = checked.CheckedGeneration.check

    def check(self, outputs, units):
        for g, (_, idxs) in zip(outputs, units):
            if g.text.startswith("SAMPLED"):
                by_text[g.text] = positives[self.studies[idxs[0]].study_id]
        return orig_check(self, outputs, units)

    monkeypatch.setattr(checked.CheckedGeneration, "check", check)
    summary = _run(studies, teacher_dir, tmp_path / "r", label_fn=label_fn, max_retries=2)
    rows = {r["study_id"]: r for r in _rows(tmp_path / "r")}
    for s in studies:
        row = rows[s.study_id]
        if positives[s.study_id]:  # greedy missed its findings; the first sampled retry fixed it
            assert row["consistent"] and row["rationale"].startswith("SAMPLED")
        else:  # a normal study: mentioning nothing is consistent at once
            assert row["consistent"] and row["rationale"].startswith("GREEDY")
    n_abnormal = sum(bool(v) for v in positives.values())
    assert summary["retried"] == n_abnormal and summary["consistent"] == len(studies)

    # a labeler that always disagrees: retries run out, the greedy rationale is kept and flagged
    always_wrong = _labels_for(lambda t: ["Fracture"])
    summary = _run(studies, teacher_dir, tmp_path / "w", label_fn=always_wrong, max_retries=2)
    rows = _rows(tmp_path / "w")
    assert not any(r["consistent"] for r in rows) and summary["consistent_fraction"] == 0.0
    assert all(r["rationale"].startswith("GREEDY") for r in rows)
    assert summary["retried"] == len(studies)


def test_study_with_no_findings_gets_a_none_prompt_and_a_checked_rationale(teacher_dir, tmp_path):
    normal = [s for s in toy_studies(40) if s.labels[FINDING_INDEX["No Finding"]] == 1.0][:4]
    assert normal
    _run(normal, teacher_dir, tmp_path / "r")
    for row in _rows(tmp_path / "r"):
        assert "\nFindings: none\nRationale:" in row["prompt"]
        assert row["rationale"]
        # consistent exactly when the rationale names no finding (the study has none)
        assert row["consistent"] == bool(np.isnan(stub_label_reports([row["rationale"]])).all())


def test_prompts_longer_than_the_context_are_cut_and_counted(teacher_dir, tmp_path):
    studies = toy_studies(3)
    studies[0].findings += " " + " ".join(["The costophrenic angles are sharp."] * 80)
    summary = _run(studies, teacher_dir, tmp_path / "r", context=160, max_new_tokens=40)
    assert summary["truncated"] == 1
    rows = {r["study_id"]: r for r in _rows(tmp_path / "r")}
    long_prompt = rows[studies[0].study_id]["prompt"]
    _, tok, _ = load_teacher(teacher_dir)
    assert len(tok.encode(long_prompt, add_special_tokens=False)) + 1 <= 120
    assert "Findings: " in long_prompt and " ...\nFindings:" in long_prompt


def test_cuda_oom_halves_the_batch_and_goes_on(teacher_dir, tmp_path, monkeypatch, caplog):
    from teacher import decode

    studies = toy_studies(8)
    _run(studies, teacher_dir, tmp_path / "ref", batch_size=8)
    real = decode.decode
    state = {"slots": []}

    def flaky(model, prompts, **kw):  # the first decode runs out of memory after two rows
        state["slots"].append(kw["slots"])
        for n, d in enumerate(real(model, prompts, **kw)):
            if len(state["slots"]) == 1 and n == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            yield d

    monkeypatch.setattr(decode, "decode", flaky)
    _run(studies, teacher_dir, tmp_path / "oom", batch_size=8)
    assert state["slots"][0] == 8 and state["slots"][1] <= 4
    assert "out of memory" in caplog.text
    ref, got = _rows(tmp_path / "ref"), _rows(tmp_path / "oom")
    assert [r["rationale"] for r in ref] == [r["rationale"] for r in got]
    assert sorted(r["study_id"] for r in got) == sorted(s.study_id for s in studies)


def test_bad_inputs(teacher_dir, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no studies"):
        _run([], teacher_dir, tmp_path / "r")
    with pytest.raises(DataError, match="teacher.json not found") as err:
        _run(toy_studies(1), tmp_path / "missing_teacher", tmp_path / "r")
    assert "missing_teacher" in str(err.value)
    meta = json.loads((teacher_dir / "teacher.json").read_text())
    broken = tmp_path / "broken_teacher"
    broken.mkdir()
    (broken / "teacher.json").write_text(json.dumps({**meta, "base": str(tmp_path / "gone"), "base_relative": None}))
    with pytest.raises(DataError, match="does not exist") as err:
        _run(toy_studies(1), broken, tmp_path / "r")
    assert str(tmp_path / "gone") in str(err.value)
    monkeypatch.setitem(sys.modules, "kdistill.labeler", None)  # the labeler cannot be imported
    with pytest.raises(DataError, match="kdistill.labeler"):
        gen.generate_rationales(toy_studies(1), teacher_dir, tmp_path / "r", _cfg())


def test_vllm_backend_is_refused_without_vllm_and_used_with_it(teacher_dir, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="vllm package, which is not installed"):
        _run(toy_studies(2), teacher_dir, tmp_path / "r", backend="vllm")

    made = {}

    class FakeLLM:  # the slice of vllm.LLM the backend uses
        def __init__(self, model, **kwargs):
            made["model_dir"] = model
            made["had_config"] = (Path(model) / "config.json").is_file()
            made["kwargs"] = kwargs

        def generate(self, requests, params):
            made["params"] = params
            out = types.SimpleNamespace(text=" Blunting indicates pleural effusion.", token_ids=[5, 6, 7])
            return [types.SimpleNamespace(outputs=[out]) for _ in requests]

    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    _run(toy_studies(2), teacher_dir, tmp_path / "v", backend="vllm")
    rows = _rows(tmp_path / "v")
    assert [r["rationale"] for r in rows] == ["Blunting indicates pleural effusion."] * 2
    assert made["had_config"]  # vllm loaded the merged teacher, saved for it ...
    assert not Path(made["model_dir"]).exists()  # ... and removed after generation
    assert [p["temperature"] for p in made["params"]] == [0.0, 0.0]  # greedy, one SamplingParams per prompt
    assert made["kwargs"]["trust_remote_code"] is False


_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from test_teacher_toy import stub_label_reports, toy_studies
    from teacher import cache, generate as gen

    mode, teacher, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "slow":  # give the test time to kill us between two shards
        real_write = cache.ShardWriter.write
        def write(self, rows):
            path = real_write(self, rows)
            time.sleep(0.4)
            return path
        cache.ShardWriter.write = write
    cfg = gen.TeacherGenerateConfig(batch_size=2, max_new_tokens=40, cpu=True, max_retries=0)
    summary = gen.generate_rationales(toy_studies(12), teacher, out, cfg, label_fn=stub_label_reports)
    from accelerate import PartialState
    state = PartialState()
    with open(os.path.join(out, f"rank{{state.process_index}}.json"), "w") as fh:
        json.dump({{"num_processes": state.num_processes, "rank": state.process_index,
                   "shards": [p.name for p in cache.shard_paths(__import__("pathlib").Path(out))
                              if p.name.startswith(f"r{{state.process_index:03d}}-")],
                   "summary": summary}}, fh)
    state.wait_for_everyone()
    state.destroy_process_group()
""")


def _script(tmp_path):
    path = tmp_path / "gen_script.py"
    path.write_text(_SCRIPT.format(tests=str(TESTS)))
    return path


def _env():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return env


def test_sigkill_mid_generation_then_restart_equals_an_uninterrupted_run(teacher_dir, tmp_path):
    reference = tmp_path / "reference"
    gen.generate_rationales(toy_studies(12), teacher_dir, reference,
                            gen.TeacherGenerateConfig(batch_size=2, max_new_tokens=40, cpu=True, max_retries=0),
                            label_fn=stub_label_reports)
    out = tmp_path / "killed"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(_script(tmp_path)), "slow", str(teacher_dir), str(out)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120  # a bound on the wait for shards before the kill, not a speed check
    while time.time() < deadline and len(cache.shard_paths(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    written = cache.done_keys(out)
    assert 0 < len(written) < 12  # really killed mid-generation
    assert not (out / "dataset").exists()

    result = subprocess.run([sys.executable, str(_script(tmp_path)), "fast", str(teacher_dir), str(out)],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "rank0.json").read_text())["summary"]
    assert summary["resumed_rows"] == len(written) and summary["duplicates_dropped"] == 0
    shard_ids = [r["study_id"] for r in cache.read_shards(out)]
    assert sorted(shard_ids) == sorted(s.study_id for s in toy_studies(12))  # every study exactly once
    got, want = _rows(out), _rows(reference)
    assert [r["study_id"] for r in got] == [r["study_id"] for r in want]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "embedding"} == {k: v for k, v in w.items() if k != "embedding"}
        np.testing.assert_allclose(g["embedding"], w["embedding"], atol=1e-6)


def test_two_cpu_processes_split_the_studies_and_both_write_shards(teacher_dir, tmp_path):
    out = tmp_path / "split"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(_script(tmp_path)), "fast", str(teacher_dir), str(out)]
    result = subprocess.run(cmd, env={**_env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert ranks[0]["shards"] and ranks[1]["shards"]  # both ranks really generated
    assert ranks[0]["summary"]["processes"] == 2 and ranks[1]["summary"] == {}  # main merged
    rows = _rows(out)
    assert [r["study_id"] for r in rows] == [s.study_id for s in toy_studies(12)]
    single = tmp_path / "single"
    gen.generate_rationales(toy_studies(12), teacher_dir, single,
                            gen.TeacherGenerateConfig(batch_size=2, max_new_tokens=40, cpu=True, max_retries=0),
                            label_fn=stub_label_reports)
    assert [r["rationale"] for r in rows] == [r["rationale"] for r in _rows(single)]


def _teacher_in_mode(teacher_dir, tmp_path, mode):
    """A copy of the teacher whose teacher.json says it was trained in ``mode``."""
    import shutil

    copy = tmp_path / f"teacher_{mode.replace('+', '_')}"
    shutil.copytree(teacher_dir, copy)
    meta = json.loads((copy / "teacher.json").read_text())
    (copy / "teacher.json").write_text(json.dumps({**meta, "prompt_mode": mode}))
    return copy


def test_prompt_mode_is_recorded_and_a_cache_of_one_mode_is_refused_for_another(teacher_dir, tmp_path):
    studies = toy_studies(3)
    report_teacher = _teacher_in_mode(teacher_dir, tmp_path, "report")
    summary = _run(studies, report_teacher, tmp_path / "r")  # prompt_mode "": the teacher's
    meta = json.loads((tmp_path / "r" / "cache.json").read_text())
    assert summary["prompt_mode"] == meta["prompt_mode"] == "report"
    assert meta["gen_config"]["prompt_mode"] == "report"
    assert meta["gen_config_hash"] == gen.gen_config_hash(_cfg(), "report") != gen.gen_config_hash(_cfg())
    rows = _rows(tmp_path / "r")
    assert all(r["prompt"].startswith("Report: ") and "\nFindings:" not in r["prompt"] for r in rows)
    # the same rows asked for in another mode: refused, naming the mode
    labels_teacher = _teacher_in_mode(teacher_dir, tmp_path, "labels+report")
    with pytest.raises(DataError, match="prompt_mode: cache 'report' vs now 'labels\\+report'"):
        _run(studies, labels_teacher, tmp_path / "r")
    # a mode the teacher was not trained in: refused, naming the teacher and the modes
    with pytest.raises(DataError, match="trained on 'report' prompts") as err:
        _run(studies, report_teacher, tmp_path / "x", prompt_mode="labels")
    assert "teacher.json" in str(err.value)
    with pytest.raises(ValueError, match="prompt_mode must be one of"):
        _cfg(prompt_mode="image").validate()


def test_old_caches_without_a_mode_read_as_labels_and_report(teacher_dir, tmp_path):
    studies = toy_studies(2)
    _run(studies, teacher_dir, tmp_path / "r")
    path = tmp_path / "r" / "cache.json"
    old = json.loads(path.read_text())
    del old["prompt_mode"]
    path.write_text(json.dumps(old))
    assert _run(studies, teacher_dir, tmp_path / "r")["resumed_rows"] == 2


def test_rationale_dataset_has_description_features_and_a_card(teacher_dir, tmp_path):
    summary = _run(toy_studies(3), teacher_dir, tmp_path / "r")
    ds = cache.load_rationales(tmp_path / "r")
    assert ds.info.description.startswith("Teacher rationales for chest X-ray studies")
    assert summary["teacher_id"] in ds.info.description and "prompt_mode=labels+report" in ds.info.description
    assert ds.info.features == cache.features() == ds.features
    card = (tmp_path / "r" / "README.md").read_text()
    assert "Research use only" in card and summary["teacher_id"] in card
    assert f"consistent_fraction | {summary['consistent_fraction']}" in card
    assert all(f"`{c}`" in card for c in cache.COLUMNS)


def test_pooled_retries_choose_the_same_rows_whatever_the_pool(teacher_dir, tmp_path):
    """Retries decoded side by side, pooled across batches, keep the lowest accepted attempt: the
    rows equal those of one attempt at a time (batch_size 1: a pool of one, one attempt per round)."""
    studies = toy_studies(10)
    picky = lambda texts: np.where(  # noqa: E731 (accepts about half of the samples, by their text)
        np.array([[len(t) % 2 == 0] * len(FINDINGS) for t in texts]), stub_label_reports(texts), 1.0)
    a = _run(studies, teacher_dir, tmp_path / "wide", label_fn=picky, max_retries=4, batch_size=8)
    b = _run(studies, teacher_dir, tmp_path / "one", label_fn=picky, max_retries=4, batch_size=1)
    assert a["retried"] > 0 and 0 < a["consistent"] < len(studies)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "embedding"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "wide")) == strip(_rows(tmp_path / "one"))
    shards = cache.read_shards(tmp_path / "wide")
    assert {r["study_id"]: r["tries"] for r in shards} == {r["study_id"]: r["tries"] for r in cache.read_shards(tmp_path / "one")}


def test_positives_consistency_allows_extra_findings_and_changes_the_hash(teacher_dir, tmp_path):
    from teacher.checked import names_every_positive

    study = [math.nan] * len(FINDINGS)
    study[FINDING_INDEX["Cardiomegaly"]] = 1.0
    extra = list(study)
    extra[FINDING_INDEX["Edema"]] = 1.0  # named, not labelled (a cause the report implies)
    assert names_every_positive(extra, study) and not names_every_positive([math.nan] * len(FINDINGS), study)
    always_edema = _labels_for(lambda t: ["Edema"] + [n for n in ("Cardiomegaly", "Pleural Effusion") if n.lower() in t.lower()])
    studies = toy_studies(6)
    strict = _run(studies, teacher_dir, tmp_path / "s", label_fn=always_edema)
    loose = _run(studies, teacher_dir, tmp_path / "p", label_fn=always_edema, consistency="positives")
    assert strict["consistent"] < loose["consistent"]
    assert gen.gen_config_hash(_cfg(consistency="positives")) != gen.gen_config_hash(_cfg())
    assert json.loads((tmp_path / "p" / "cache.json").read_text())["gen_config"]["consistency"] == "positives"


def test_implied_consistency_accepts_a_stated_causes_findings_only(teacher_dir, tmp_path):
    # every rationale is read as naming cardiomegaly and edema; every study is labelled cardiomegaly only
    heart_and_edema = _labels_for(lambda t: ["Cardiomegaly", "Edema"])
    studies = toy_studies(6)
    for k, s in enumerate(studies):
        s.labels = [math.nan] * len(FINDINGS)
        s.labels[FINDING_INDEX["Cardiomegaly"]] = 1.0
        if k < 3:  # these reports state a cause that brings edema; the other three do not
            s.impression = "Findings consistent with congestive heart failure."
    strict = _run(studies, teacher_dir, tmp_path / "s", label_fn=heart_and_edema)
    implied = _run(studies, teacher_dir, tmp_path / "i", label_fn=heart_and_edema, consistency="implied")
    rows = {r["study_id"]: r["consistent"] for r in cache.load_rationales(tmp_path / "i").to_list()}
    assert strict["consistent"] == 0
    assert rows == {s.study_id: k < 3 for k, s in enumerate(studies)}
    assert implied["consistent"] == 3
    assert gen.gen_config_hash(_cfg(consistency="implied")) != gen.gen_config_hash(_cfg())
    assert json.loads((tmp_path / "i" / "cache.json").read_text())["gen_config"]["consistency"] == "implied"
