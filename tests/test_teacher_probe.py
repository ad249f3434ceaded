"""The knowledge probe: its questions follow the knowledge file, its log-likelihoods equal a
direct forward pass, and its figures are the hand-computable ones for an oracle and an
anti-oracle scorer."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_teacher_toy import toy_docs  # noqa: E402

from kdistill.data.phantom.knowledge import load_knowledge  # noqa: E402
from teacher import probe  # noqa: E402
from teacher.pretrain import train_tokenizer  # noqa: E402


def test_questions_come_from_the_knowledge_file():
    know = load_knowledge()
    qs = probe.questions(know)
    signs = [q for q in qs if q.kind == "signs" and q.form == "rationale"]
    assert len(signs) == sum(len(know[n].signs) for n in probe._topics(know))
    effusion_sign = next(q for q in signs if q.text == know["Pleural Effusion"].signs[0])
    assert effusion_sign.gold == {"Pleural Effusion"}
    chf = next(q for q in qs if q.kind == "causes" and q.form == "textbook" and q.text == "congestive heart failure")
    assert chf.gold == {"Cardiomegaly", "Edema", "Pleural Effusion"}  # listed under all three
    assert not any(q.text == "intensive care" for q in qs)  # Support Devices' indications are not causes


def test_continuation_logprobs_equal_a_direct_forward_pass(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer([d["text"] for d in toy_docs(10)], 300, tmp_path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2)).eval()
    pairs = [("The radiograph shows", " a pleural effusion."), ("Fluid", " in the pleural space collects.")]
    got = probe.continuation_logprobs(model, tok, pairs, batch_size=1)
    batched = probe.continuation_logprobs(model, tok, pairs, batch_size=2)  # padded together
    for (prefix, cont), value, other in zip(pairs, got, batched):
        head = [tok.bos_token_id] + tok.encode(prefix, add_special_tokens=False)
        tail = tok.encode(cont, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([head + tail])).logits[0], -1)
        want = sum(float(logp[len(head) - 1 + j, t]) for j, t in enumerate(tail))
        assert value == pytest.approx(want, abs=1e-4) and other == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("oracle", [True, False])
def test_scores_of_an_oracle_and_of_an_anti_oracle(oracle, monkeypatch):
    know = load_knowledge()
    topics = probe._topics(know)

    def fake_scores(model, tok, question, topics_, know_):
        return [(1.0 if n in question.gold else 0.0) * (1 if oracle else -1) for n in topics_]

    monkeypatch.setattr(probe, "_scores", fake_scores)
    result = probe.run_probe(torch.nn.Linear(1, 1), None, know)
    syndromes = getattr(know, "syndromes", None) or {}
    for key, entry in result.items():
        assert entry["score"] == (1.0 if oracle else 0.0), key
        # the syndromes (the phantom's report_style causes) are few; every other kind has many questions
        want_n = len(syndromes) if key == "causes/syndrome" else 10
        assert 0 < entry["chance"] < 0.5 and (entry["n"] == want_n if key == "causes/syndrome" else entry["n"] > want_n), key
    assert ("causes/syndrome" in result) == bool(syndromes)
    chance = [len(q.gold) / len(topics) for q in probe.questions(know) if q.kind == "causes" and q.form == "textbook"]
    assert result["causes/textbook"]["chance"] == round(sum(chance) / len(chance), 4)
    assert math.isclose(result["signs/rationale"]["chance"], 1 / len(topics), abs_tol=1e-3)
