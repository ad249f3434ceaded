"""teacher.decode: continuous batching over paged KV equals transformers' generate, one prompt
at a time, on tiny random models of the families it admits (Llama, Mistral with a sliding
window shorter than the sequences, Qwen2 with biases and sliding layers, GPT-2); other
families, and models whose forward it does not reproduce, are refused."""
from __future__ import annotations

import pytest
import torch

from teacher import decode, paged_kv

EOS, PAD = 2, 0


def _llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kw.pop("kv", 4), max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, **kw)
    return LlamaForCausalLM(cfg).eval()


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    return Qwen2ForCausalLM(cfg).eval()


def _mistral(window=6):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(2)
    cfg = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        sliding_window=window, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    return MistralForCausalLM(cfg).eval()


def _qwen2_sliding():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(4)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      use_sliding_window=True, sliding_window=5, max_window_layers=1,
                      bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    model = Qwen2ForCausalLM(cfg).eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    return model


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    cfg = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(cfg).eval()


def _prompts(n=7, vocab=97):
    g = torch.Generator().manual_seed(3)
    lengths = [1, 3, 4, 5, 8, 9, 13, 17][:n]  # around the page size the test sets (4)
    return [[1] + torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


def _reference(model, prompts, max_new):
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, pad_token_id=PAD, eos_token_id=EOS)[0, len(p):].tolist()
        out.append(new[: new.index(EOS)] if EOS in new else new)
    return out


def _embedding(model, prompt, ids):
    """Mean final hidden state over the generated tokens (last prompt state when none)."""
    with torch.no_grad():
        hidden = model.base_model(input_ids=torch.tensor([prompt + ids])).last_hidden_state[0]
    return hidden[-max(len(ids), 1):].mean(0)


FAMILIES = [_llama, lambda: _llama(kv=2), _qwen2, _mistral, _qwen2_sliding, _gpt2]
FAMILY_IDS = ["llama", "llama-gqa", "qwen2-bias", "mistral-window", "qwen2-sliding-layer", "gpt2"]


@pytest.mark.parametrize("make", FAMILIES, ids=FAMILY_IDS)
def test_greedy_equals_generate_one_by_one(make, monkeypatch):
    monkeypatch.setattr(paged_kv, "PAGE", 4)  # many page boundaries, pool growth
    model = make()
    assert decode.supports(model)
    prompts = _prompts()
    want = _reference(model, prompts, max_new=12)
    got = sorted(decode.decode(model, prompts, slots=3, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD),
                 key=lambda d: d.index)
    assert [d.index for d in got] == list(range(len(prompts)))
    assert [d.ids for d in got] == want
    for d, p in zip(got, prompts):
        torch.testing.assert_close(d.embedding, _embedding(model, p, d.ids), atol=1e-5, rtol=1e-4)


def test_rows_that_end_early_leave_and_their_pages_are_reused(monkeypatch):
    """EOS as the likeliest token for some prompts: rows of every length, refills, reused pages."""
    monkeypatch.setattr(paged_kv, "PAGE", 4)
    model = _llama()
    with torch.no_grad():  # make EOS win after token 5 is fed, so rows end at different steps
        model.lm_head.weight[EOS] = model.model.embed_tokens.weight[5] * 4
    prompts = _prompts() + [[1, 5], [1, 7, 5]]
    want = _reference(model, prompts, max_new=10)
    assert len({len(w) for w in want}) > 2 and any(len(w) < 10 for w in want)
    got = sorted(decode.decode(model, prompts, slots=2, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD),
                 key=lambda d: d.index)
    assert [d.ids for d in got] == want


def test_sampling_follows_each_rows_own_seed(monkeypatch):
    model = _llama()
    prompts = _prompts()
    run = lambda ps, seeds, slots: {  # noqa: E731
        tuple(ps[d.index]): d.ids for d in decode.decode(model, ps, slots=slots, max_new_tokens=8, eos_token_id=EOS,
                                                         pad_token_id=PAD, seeds=seeds, temperature=1.5)}
    a = run(prompts, list(range(len(prompts))), slots=5)
    b = run(prompts[::-1], list(range(len(prompts)))[::-1], slots=2)
    assert a == b
    assert a != run(prompts, [s + 50 for s in range(len(prompts))], slots=5)


def test_other_families_and_unfaithful_forwards_are_refused():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=64)).eval()
    assert not decode.supports(neox)  # not a layout this loop knows
    gpt2 = _gpt2()
    assert decode.supports(gpt2, context=64) and not decode.supports(gpt2, context=65)  # past n_positions
    # a Llama whose forward differs from the layout (an extra scale in its MLP) fails the probe
    odd = _llama()
    real = odd.model.layers[0].mlp.forward
    odd.model.layers[0].mlp.forward = lambda x: 1.5 * real(x)
    assert not decode.supports(odd)
