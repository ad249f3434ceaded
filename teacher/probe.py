"""Knowledge probe: what a teacher model learned from the corpus about the 14 findings.

The questions come from the knowledge file the corpus was written from
(``kdistill/data/findings.yaml`` via ``kdistill.data.phantom.knowledge``), so the answers are
known:

* ``signs``: given one radiographic sign of a finding, does the model name that finding?
  Scored in two sentence forms the corpus uses. *rationale form*: "The radiograph shows {sign}.
  This pattern indicates" followed by each finding's name; the score of a name is its
  log-likelihood there minus its log-likelihood after the same sentence without the sign
  (what the sign adds, so a name the model likes anywhere does not win). *textbook form*: the
  log-likelihood of the sign after "The radiographic signs of {finding} are" for each finding,
  i.e. the finding under which the model finds the sign most likely (Bayes with a uniform
  prior). Top-1 accuracy over the 13 findings that have signs; chance 1/13.
* ``causes``: given a cause (one listed under a finding's ``causes``, or a syndrome of
  ``syndromes:``), which findings does it bring? The findings are ranked by the log-likelihood
  of the cause after "Common causes of {finding} are" (textbook form) or, for syndromes, of
  each finding's name after "On a chest radiograph {cause} brings" minus the same without the
  cause; the figure is recall at k = the number of findings it brings (the share of them in
  the top k), chance k/13 averaged.

Reported for any causal LM + tokenizer; ``probe_stages`` scores the three stages of a run's
teacher: the untrained model (the base's config, random weights), the pretrained base and the
LoRA-adapted teacher.

    python -m teacher.probe --teacher runs/demo/teacher [--out probe.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from kdistill.labels import FINDINGS

SIGN_PREFIX = "The radiograph shows {sign}. This pattern indicates"
SIGN_NEUTRAL = "The radiograph shows this. This pattern indicates"
SIGNS_OF = "The radiographic signs of {name} are"
CAUSES_OF = "Common causes of {name} are"
BRINGS = "On a chest radiograph {cause} brings"
BRINGS_NEUTRAL = "On a chest radiograph it brings"


@dataclasses.dataclass(frozen=True)
class Question:
    kind: str  # "signs" or "causes"
    form: str  # "rationale", "textbook" or "syndrome"
    text: str  # the sign or the cause
    gold: frozenset[str]  # the findings it points to


def questions(know=None) -> list[Question]:
    """Every probe question the knowledge file answers."""
    from kdistill.data.phantom.knowledge import load_knowledge

    know = know or load_knowledge()
    names = _topics(know)
    out = []
    for name in names:
        for sign in know[name].signs:
            owners = frozenset(n for n in names if sign in know[n].signs)
            out += [Question("signs", "rationale", sign, owners), Question("signs", "textbook", sign, owners)]
    causes: dict[str, set[str]] = {}
    for name in names:
        if name == "Support Devices":  # its "causes" are indications, not causes
            continue
        for cause in know[name].causes:
            causes.setdefault(cause, set()).add(name)
    out += [Question("causes", "textbook", c, frozenset(f)) for c, f in sorted(causes.items())]
    for cause, info in sorted((getattr(know, "syndromes", None) or {}).items()):
        out.append(Question("causes", "syndrome", cause, frozenset(info.brings) | frozenset(info.requires)))
    return out


def _topics(know) -> list[str]:
    return [n for n in FINDINGS if n != "No Finding" and know[n].signs]


@torch.no_grad()
def continuation_logprobs(model, tok, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> list[float]:
    """Sum of log-probabilities of each ``continuation`` after its ``prefix`` (BOS first)."""
    device = next(model.parameters()).device
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    seqs = []
    for prefix, continuation in pairs:
        head = bos + tok.encode(prefix, add_special_tokens=False)
        seqs.append((head, tok.encode(continuation, add_special_tokens=False)))
    out: list[float] = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(h) + len(c) for h, c in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (h, c) in enumerate(chunk):
            ids[i, : len(h) + len(c)] = torch.tensor(h + c)
            mask[i, : len(h) + len(c)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for i, (h, c) in enumerate(chunk):
            positions = torch.arange(len(h) - 1, len(h) + len(c) - 1)
            out.append(float(logp[i, positions, torch.tensor(c)].sum()))
    return out


def _scores(model, tok, question: Question, topics: list[str], know) -> list[float]:
    """One score per finding of ``topics``: higher = the model ties ``question`` to it more."""
    canon = [" " + know[n].canonical + "." for n in topics]
    if question.form == "rationale":
        with_sign = continuation_logprobs(model, tok, [(SIGN_PREFIX.format(sign=question.text), c) for c in canon])
        neutral = continuation_logprobs(model, tok, [(SIGN_NEUTRAL, c) for c in canon])
        return [a - b for a, b in zip(with_sign, neutral)]
    if question.form == "syndrome":
        with_cause = continuation_logprobs(model, tok, [(BRINGS.format(cause=question.text), c) for c in canon])
        neutral = continuation_logprobs(model, tok, [(BRINGS_NEUTRAL, c) for c in canon])
        return [a - b for a, b in zip(with_cause, neutral)]
    template = SIGNS_OF if question.kind == "signs" else CAUSES_OF
    return continuation_logprobs(model, tok, [(template.format(name=know[n].canonical), " " + question.text + ".")
                                              for n in topics])


def run_probe(model, tok, know=None) -> dict[str, Any]:
    """Accuracy (signs) and recall@k (causes) per form, with the chance level of each."""
    from kdistill.data.phantom.knowledge import load_knowledge

    know = know or load_knowledge()
    topics = _topics(know)
    model.eval()
    results: dict[str, dict[str, list[float]]] = {}
    for q in questions(know):
        scores = _scores(model, tok, q, topics, know)
        k = len(q.gold)
        top = sorted(range(len(topics)), key=lambda i: -scores[i])[:k]
        hit = sum(topics[i] in q.gold for i in top) / k
        entry = results.setdefault(f"{q.kind}/{q.form}", {"hit": [], "chance": []})
        entry["hit"].append(hit)
        entry["chance"].append(k / len(topics))
    return {key: {"score": round(_mean(v["hit"]), 4), "chance": round(_mean(v["chance"]), 4), "n": len(v["hit"]),
                  "interval95": _interval(v["hit"])} for key, v in results.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _interval(values: Sequence[float]) -> list[float]:
    """Normal-approximation 95% interval of the mean (the questions as the sample)."""
    n = len(values)
    if n < 2:
        return [round(_mean(values), 4)] * 2
    mean = _mean(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return [round(max(0.0, mean - half), 4), round(min(1.0, mean + half), 4)]


def probe_stages(teacher_dir: str | Path, base_dir: str | Path | None = None, seed: int = 0,
                 trust_remote_code: bool = False) -> dict[str, Any]:
    """The probe for the untrained model (the base's config, random weights drawn with ``seed``),
    the base (pretrained) and the teacher (base + LoRA, merged)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from teacher.modeling import load_causal_lm, load_teacher, load_tokenizer, read_teacher_json, teacher_base

    teacher_dir = Path(teacher_dir)
    base = str(base_dir) if base_dir else teacher_base(teacher_dir, read_teacher_json(teacher_dir))
    tok = load_tokenizer(base, trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    untrained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    out = {"untrained": run_probe(untrained, tok)}
    out["pretrained"] = run_probe(load_causal_lm(base, trust_remote_code=trust_remote_code), tok)
    model, teacher_tok, _ = load_teacher(teacher_dir, trust_remote_code=trust_remote_code)
    out["teacher"] = run_probe(model, teacher_tok)
    return out


def table(stages: dict[str, Any]) -> str:
    keys = sorted({k for v in stages.values() for k in v})
    lines = [f"{'question':<22}{'chance':>8}" + "".join(f"{s:>13}" for s in stages)]
    for key in keys:
        first = next(v[key] for v in stages.values() if key in v)
        row = f"{key:<22}{first['chance']:>8.3f}"
        row += "".join(f"{stages[s][key]['score']:>13.3f}" if key in stages[s] else f"{'-':>13}" for s in stages)
        lines.append(row + f"   (n={first['n']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teacher.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher folder (kdistill teacher train)")
    parser.add_argument("--base", help="pretrained base (default: the teacher's)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    stages = probe_stages(args.teacher, args.base, trust_remote_code=args.trust_remote_code)
    print(table(stages))
    if args.out:
        from kdistill.io import write_json

        write_json(args.out, stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
