"""Pretraining (tokenizer + tiny Llama) and LoRA adaptation on a toy corpus."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_teacher_toy import stub_label_reports, write_toy_corpus  # noqa: E402

from kdistill.errors import DataError  # noqa: E402
from teacher import modeling  # noqa: E402
from teacher import train as trainlib  # noqa: E402
from teacher.pretrain import TeacherPretrainConfig as PretrainConfig  # noqa: E402
from teacher.pretrain import pretrain  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher_train")
    corpus = write_toy_corpus(root / "corpus.jsonl", n_rationale=100)
    result = pretrain(PretrainConfig(model_config="llama_tiny", max_steps=60, batch_size=16, lr=1e-2, warmup_steps=5),
                      corpus, root / "base", label_fn=stub_label_reports)
    return {"root": root, "corpus": corpus, "base": root / "base", "pretrain": result}


def _train_cfg(**kw):
    defaults = dict(max_steps=12, batch_size=8, lr=5e-3, warmup_steps=2, lora_r=4, lora_alpha=8,
                    save_every=0, log_every=100, cpu=True)
    return trainlib.TeacherTrainConfig(**{**defaults, **kw})


def test_pretrain_loss_goes_down_and_tokenizer_loads_with_autotokenizer(toy):
    from transformers import AutoTokenizer

    result = toy["pretrain"]
    assert result["final_loss"] < 0.5 * result["first_loss"]
    # better than a uniform guess over the vocabulary on the held-out docs
    assert result["eval_loss"] < math.log(result["vocab_size"]) / 2
    tok = AutoTokenizer.from_pretrained(str(toy["base"]))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    text = "Blunting of the left costophrenic angle"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # byte-level: lossless
    config = json.loads((toy["base"] / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == len(tok)


def test_lora_training_lowers_loss_and_saves_adapter_tokenizer_and_teacher_json(toy):
    out = toy["root"] / "teacher"
    result = trainlib.train(_train_cfg(max_steps=30), toy["base"], toy["corpus"], out)
    assert result["eval_loss"] < result["eval_before"]["eval_loss"]
    assert result["final_train_loss"] < result["first_train_loss"]
    meta = json.loads((out / "teacher.json").read_text())
    digest = hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert meta["adapter_hash"] == digest
    assert meta["teacher_id"] == f"base+lora-{digest[:16]}"
    assert meta["lora_targets"] == modeling.LORA_TARGETS["llama"]  # all linear layers of the blocks
    assert (out / "tokenizer.json").is_file() and not (out / "checkpoints").exists()


def test_reloaded_adapter_gives_identical_logits_merged_or_not(toy):
    from peft import PeftModel

    out = toy["root"] / "teacher_reload"
    trainlib.train(_train_cfg(), toy["base"], toy["corpus"], out)
    merged, tok, _ = modeling.load_teacher(out)
    ids = torch.tensor([tok.encode("Findings: Cardiomegaly\nRationale:")])
    base = modeling.load_causal_lm(toy["base"])
    with torch.no_grad():
        base_logits = base(ids).logits
        unmerged = PeftModel.from_pretrained(modeling.load_causal_lm(toy["base"]), str(out)).eval()
        unmerged_logits = unmerged(ids).logits
        merged_logits = merged(ids).logits
        again = modeling.load_teacher(out)[0](ids).logits
    assert torch.equal(merged_logits, again)  # reloading is deterministic
    assert torch.allclose(merged_logits, unmerged_logits, atol=1e-5)  # merge_and_unload == adapter on top
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the adapter is not a no-op


def test_interrupted_training_resumes_from_checkpoint_to_the_same_adapter(toy, monkeypatch):
    from safetensors.torch import load_file

    straight = toy["root"] / "straight"
    trainlib.train(_train_cfg(max_steps=8, lora_dropout=0.1), toy["base"], toy["corpus"], straight)

    resumed = toy["root"] / "resumed"
    real_save = trainlib._save_checkpoint

    def save_then_die(accelerator, checkpoints, step):
        real_save(accelerator, checkpoints, step)
        raise KeyboardInterrupt  # the run dies right after its step-4 checkpoint

    monkeypatch.setattr(trainlib, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainlib.train(_train_cfg(max_steps=8, lora_dropout=0.1, save_every=4), toy["base"], toy["corpus"], resumed)
    assert json.loads((resumed / "checkpoints" / "step_4" / "state.json").read_text())["step"] == 4
    monkeypatch.setattr(trainlib, "_save_checkpoint", real_save)
    result = trainlib.train(_train_cfg(max_steps=8, lora_dropout=0.1, save_every=4), toy["base"], toy["corpus"], resumed)
    assert result["steps"] == 8 and result["resumed_from_step"] == 4
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_missing_base_model_path_is_a_data_error_naming_it(toy, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(DataError, match="does not exist") as err:
        trainlib.train(_train_cfg(), missing, toy["corpus"], tmp_path / "out")
    assert str(missing) in str(err.value)


def test_empty_corpus_is_a_data_error_naming_it(toy, tmp_path):
    empty = tmp_path / "corpus.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty") as err:
        trainlib.train(_train_cfg(), toy["base"], empty, tmp_path / "out")
    assert str(empty) in str(err.value)


def test_tokenizer_without_pad_token_gets_eos_as_pad_and_says_so(toy, tmp_path, caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy["base"]))
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path))
    assert AutoTokenizer.from_pretrained(str(tmp_path)).pad_token is None
    with caplog.at_level(logging.WARNING):
        loaded = modeling.load_tokenizer(tmp_path)
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == loaded.eos_token_id
    assert "no pad token" in caplog.text


def test_lora_targets_per_family_and_all_linear_fallback():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=50))
    assert modeling.lora_targets(llama) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    assert modeling.lora_targets(gpt2) == ["c_attn", "c_proj", "c_fc"]
    gpt2.config.model_type = "somethingnew"
    assert modeling.lora_targets(gpt2) == "all-linear"


def test_rationale_docs_the_labeler_reads_otherwise_are_dropped_once(tmp_path):
    from teacher import corpus as corpuslib

    docs = [
        {"kind": "rationale", "text": "Meniscus: pleural effusion.", "findings": ["Pleural Effusion"]},
        {"kind": "rationale", "text": "Effusion; causes include edema.", "findings": ["Pleural Effusion"]},  # extra
        {"kind": "rationale", "text": "Wide heart.", "findings": ["Cardiomegaly"]},  # misses its finding
        {"kind": "rationale", "text": "Clear lungs.", "findings": []},
        {"kind": "textbook", "text": "Edema and effusion both ...", "findings": []},  # textbook: kept
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    check = tmp_path / "corpus_check.json"
    kept, counts = corpuslib.drop_inconsistent(docs, stub_label_reports, path, [check], write_to=check)
    assert [d["text"] for d in kept] == ["Meniscus: pleural effusion.", "Clear lungs.", "Edema and effusion both ..."]
    assert counts == {"rationale_docs": 4, "dropped_inconsistent": 2}
    assert json.loads(check.read_text())["dropped"] == [1, 2]

    def must_not_label(texts):
        raise AssertionError("verdicts for this corpus are saved; no labelling needed")

    again, _ = corpuslib.drop_inconsistent(docs, must_not_label, path, [check])
    assert again == kept
    path.write_text(path.read_text() + json.dumps({"kind": "textbook", "text": "new"}) + "\n")
    with pytest.raises(AssertionError, match="saved"):  # another corpus: the saved verdicts do not apply
        corpuslib.drop_inconsistent(docs, must_not_label, path, [check])


def _pretrain_cfg(**kw):
    defaults = dict(model_config="llama_tiny", max_steps=8, batch_size=8, lr=1e-2, warmup_steps=2, log_every=100)
    return PretrainConfig(**{**defaults, **kw})


def test_killed_pretraining_resumes_to_the_same_weights(toy, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from teacher import pretrain as pretrainlib

    straight = tmp_path / "straight"
    pretrain(_pretrain_cfg(textbook_fraction=0.3), toy["corpus"], straight, label_fn=stub_label_reports)
    resumed = tmp_path / "resumed"
    real_save = pretrainlib._save_checkpoint

    def save_then_die(accelerator, checkpoints, step):
        real_save(accelerator, checkpoints, step)
        raise KeyboardInterrupt  # killed right after the step-3 state

    monkeypatch.setattr(pretrainlib, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_pretrain_cfg(textbook_fraction=0.3, save_every=3), toy["corpus"], resumed, label_fn=stub_label_reports)
    assert json.loads((resumed / "checkpoints" / "step_3" / "state.json").read_text())["step"] == 3
    assert not (resumed / "model.safetensors").exists()
    monkeypatch.setattr(pretrainlib, "_save_checkpoint", real_save)
    result = pretrain(_pretrain_cfg(textbook_fraction=0.3, save_every=3), toy["corpus"], resumed,
                      label_fn=stub_label_reports)
    assert result["resumed_from_step"] == 3 and not (resumed / "checkpoints").exists()
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    # a state made by another config is not resumed from
    other = tmp_path / "other"
    monkeypatch.setattr(pretrainlib, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_pretrain_cfg(save_every=3), toy["corpus"], other, label_fn=stub_label_reports)
    monkeypatch.setattr(pretrainlib, "_save_checkpoint", real_save)
    assert pretrain(_pretrain_cfg(save_every=3, lr=5e-3), toy["corpus"], other,
                    label_fn=stub_label_reports)["resumed_from_step"] == 0


def test_textbook_fraction_mixes_textbook_docs_in_at_that_share(toy):
    from teacher import corpus as corpuslib
    from teacher.pretrain import textbook_share

    docs = corpuslib.read_corpus(toy["corpus"])
    texts = textbook_share(docs, 90, 0.25, seed=0)
    assert len(texts) == 30  # 30 of 120 sequences
    textbook = {d["text"] for d in docs if d["kind"] == "textbook"}
    assert {t.target for t in texts} == textbook  # every doc before any repeats (4 docs, 30 rows)
    assert textbook_share(docs, 90, 0.0, seed=0) == []
    assert toy["pretrain"]["docs"] == 0  # the default is pairs only
    with pytest.warns(FutureWarning, match="textbook_fraction"):
        from kdistill.config import from_dict

        assert from_dict(PretrainConfig, {"textbook": True}).textbook_fraction == 0.25


def test_adapter_loads_with_auto_peft_from_another_cwd_and_the_folder_has_a_model_card(toy, tmp_path, monkeypatch):
    import shutil

    from peft import AutoPeftModelForCausalLM, PeftModel

    shutil.copytree(toy["base"], tmp_path / "run" / "base")
    monkeypatch.chdir(tmp_path / "run")  # the base given relative to this cwd, as `kdistill run` does
    trainlib.train(_train_cfg(max_steps=2), "base", toy["corpus"], Path("teacher"))
    out = (tmp_path / "run" / "teacher").resolve()
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded).is_absolute() and Path(recorded) == (tmp_path / "run" / "base").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    auto = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    manual = PeftModel.from_pretrained(modeling.load_causal_lm(tmp_path / "run" / "base"), str(out)).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.allclose(auto(ids).logits, manual(ids).logits, atol=1e-6)
    card = (out / "README.md").read_text()
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["teacher_id"] in card and "Research use only" in card
    assert f"eval_loss | {meta['result']['eval_loss']}" in card  # a measured figure
    assert "prompt mode: `labels+report`" in card and "llama_tiny" in card  # what it was trained on
