"""LoRA train -> merge -> batched generate on tiny random models of the four families the fast
decoding path admits (Llama, Mistral, Qwen2, GPT-2), built from configs (nothing downloaded):
the continuous-batching outputs equal transformers' ``generate`` run one prompt at a time."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_teacher_toy import toy_docs, toy_studies, write_toy_corpus  # noqa: E402

from teacher import generate as gen  # noqa: E402
from teacher import modeling  # noqa: E402
from teacher.pretrain import train_tokenizer  # noqa: E402
from teacher.train import TeacherTrainConfig, train  # noqa: E402


def _config(family: str, tok):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, **ids)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":  # a window shorter than the prompts: the loop must apply it
        return MistralConfig(**common, sliding_window=24)
    if family == "qwen2":
        return Qwen2Config(**common)
    return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids)


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("families")
    corpus = write_toy_corpus(root / "corpus.jsonl", n_rationale=40)
    tok = train_tokenizer([d["text"] for d in toy_docs(40)] + [gen.prompt_for_study(s).text for s in toy_studies(20)],
                          400, root / "tok")
    return root, corpus, tok


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2"])
def test_lora_merge_then_continuous_batching_equals_generate_one_by_one(family, corpus_and_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    _, corpus, tok = corpus_and_tokenizer
    torch.manual_seed(0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(_config(family, tok)).save_pretrained(str(base))
    tok.save_pretrained(str(base))
    train(TeacherTrainConfig(max_steps=4, batch_size=8, lr=2e-2, warmup_steps=1, lora_r=4, lora_alpha=8,
                             save_every=0, cpu=True, max_length=256), base, corpus, tmp_path / "teacher")
    model, tok2, meta = modeling.load_teacher(tmp_path / "teacher")
    assert meta["lora_targets"] == modeling.LORA_TARGETS[family]
    backend = gen.HFBackend(model, tok2, gen.TeacherGenerateConfig(batch_size=3, max_new_tokens=20, cpu=True), "cpu")
    assert backend.continuous, f"{family} fell back to model.generate"
    prompts = sorted({gen.prompt_for_study(s).text for s in toy_studies(7)})
    assert max(len(backend.prompt_ids(p)) for p in prompts) > 24  # longer than Mistral's window
    got = backend.generate(prompts, sample=False)
    want = []
    for p in prompts:
        ids = torch.tensor([backend.prompt_ids(p)])
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                             pad_token_id=tok2.pad_token_id, eos_token_id=tok2.eos_token_id)[0, ids.shape[1]:].tolist()
        want.append(new[: new.index(tok2.eos_token_id)] if tok2.eos_token_id in new else new)
    assert [g.ids for g in got] == want
    assert sum(len(w) for w in want) > 0
    # the LoRA was merged into the weights it trained (the merged model is not the base)
    base_model = modeling.load_causal_lm(base)
    ids = torch.tensor([backend.prompt_ids(prompts[0])])
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base_model(ids).logits, atol=1e-4)
