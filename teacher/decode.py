"""Continuous-batching decoding for Llama, Mistral, Qwen2 and GPT-2 causal LMs, greedy or sampled.

Why not ``model.generate`` on padded batches: every row of a batch runs until the longest one
ends, the KV cache is copied at every step to grow it, each step attends over every row's
padding, and on a small model the per-step Python of the library costs more than the
arithmetic. Here, as in vLLM:

* at most ``slots`` rows decode together; a row leaves the step it ends and the next prompt is
  prefilled in its place, so no step is spent on finished rows;
* keys and values live in a pool of fixed-size pages (``teacher.paged_kv``); a row owns the
  pages it has filled and a step writes one position per row, nothing is copied;
* attention at a decoding step reads the pages in use and nothing else (per-page scores and a
  softmax across each row's pages), so a short row does not pay for a long neighbour;
* the step is a plain loop over the layers' own weights (``teacher.decode_families``: the
  model's norms, rotary table or learned positions and projections; q/k/v and gate/up fused
  into one matmul each; a sliding window where the config has one).

Each row gets the tokens ``model.generate`` gives it alone: the same positions (counted from
its own first token), the same context, argmax of the same logits up to float rounding.
:func:`supports` admits a model only when this forward reproduces the model's own logits on a
probe, so another architecture falls back to ``model.generate`` instead of decoding wrongly.

Sampling draws each row from its own generator, seeded per row, so a row's sample does not
depend on which rows shared its steps (a resumed run samples alike).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from teacher import decode_families as families
from teacher.paged_kv import PagedDecoder, Row

log = logging.getLogger(__name__)



@dataclass
class Decoded:
    index: int  # position in the ``prompts`` given to :func:`decode`
    ids: list[int]  # generated tokens, EOS excluded
    embedding: torch.Tensor  # mean last hidden state over the fed rationale tokens (float32)


def _structure_ok(model, context: int | None) -> bool:
    if not families.structure_ok(model):
        return False
    cfg = model.config.get_text_config()
    limit = context or getattr(cfg, "max_position_embeddings", 0)
    if families.family_of(model) == "gpt2" and limit > cfg.n_positions:
        return False  # learned positions end at n_positions
    return True


def supports(model, context: int | None = None) -> bool:
    """True when this module's forward reproduces ``model``'s logits: a prompt prefilled, then
    three tokens decoded one at a time, checked against one full forward pass. ``context``: the
    longest prompt + new tokens the caller will decode. A sliding window shorter than the probe
    is applied in both passes, so the probe checks it too."""
    if not _structure_ok(model, context):
        return False
    try:
        vocab = model.config.get_text_config().vocab_size
        probe = [(7 * i + 3) % vocab for i in range(1, 13)]
        with torch.no_grad():
            want = model(input_ids=torch.tensor([probe], device=model.device)).logits[0, -4:].float()
            got = list(PagedDecoder(model, 1, 16, [len(probe)]).probe_logits(probe[:9], probe[9:]))
        return torch.allclose(torch.stack(got), want, atol=1e-4, rtol=1e-3)
    except Exception as err:  # noqa: BLE001 (an architecture this loop does not handle)
        log.info("continuous decoding not available for %s: %s", type(model).__name__, err)
        return False


@torch.inference_mode()
def decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    slots: int,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    seeds: Sequence[int] | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    refill_at: int | None = None,
) -> Iterator[Decoded]:
    """Decode ``prompts`` (token ids, BOS included), yielding each as it finishes.

    Greedy unless ``seeds`` is given (one per prompt: sampling at ``temperature`` with nucleus
    ``top_p``). At most ``slots`` rows decode together; freed slots are refilled once
    ``refill_at`` of them (default a quarter) are free, so one prefill serves several prompts.
    ``pad_token_id`` is not needed by this loop (no padding is fed); it is accepted for the
    same call as ``model.generate``."""
    del pad_token_id
    if not prompts:
        return
    slots = max(1, min(slots, len(prompts)))
    loop = _Loop(model, prompts, slots, max_new_tokens, eos_token_id, seeds, temperature, top_p)
    refill_at = refill_at or max(1, slots // 4)
    while True:
        yield from loop.retire()
        free = sum(r is None for r in loop.rows)
        if loop.queue and free >= min(refill_at, len(loop.queue)):
            loop.refill()
        active = [s for s, r in enumerate(loop.rows) if r is not None and not r.done]
        if active:
            loop.advance(active)
        elif not (any(r is not None for r in loop.rows) or loop.queue):
            return
        # else: rows that ended at their first token leave at the top of the loop


class _Loop:
    """The rows in their slots, the queue of prompts not started, and the per-step bookkeeping."""

    def __init__(self, model, prompts, slots, max_new_tokens, eos_token_id, seeds, temperature, top_p):
        self.prompts, self.max_new, self.eos = prompts, max_new_tokens, eos_token_id
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.dec = PagedDecoder(model, slots, max_new_tokens, [len(p) for p in prompts])
        self.rows: list[Row | None] = [None] * slots
        self.queue = list(range(len(prompts)))[::-1]  # pop() takes prompts in the given order

    def take(self, row: Row, logits: torch.Tensor, greedy: int | None = None) -> None:
        if row.generator is not None:
            token = _sample(logits, self.temperature, self.top_p, row.generator)
        else:
            token = int(logits.argmax()) if greedy is None else greedy
        if token == self.eos:
            row.done = True
        else:
            row.ids.append(token)

    def retire(self) -> Iterator[Decoded]:
        """Rows that ended leave their slot (and their pages go back to the pool)."""
        for slot, row in enumerate(self.rows):
            if row is not None and (row.done or row.fed == self.max_new):
                self.rows[slot] = None
                self.dec.release(row.pages)
                emb = self.dec.sums[slot] / row.fed if row.fed else row.prompt_state
                yield Decoded(row.index, row.ids, emb.cpu().clone())

    def refill(self) -> None:
        dec, dev = self.dec, self.dec.device
        free = [s for s, r in enumerate(self.rows) if r is None][: len(self.queue)]
        if not free:
            return
        new = [self.queue.pop() for _ in free]
        hidden, pages = dec.prefill([list(self.prompts[i]) for i in new], free)
        logits = dec.w.head(hidden).float()
        dec.sums[torch.tensor(free, device=dev)] = 0.0
        for r, (slot, i) in enumerate(zip(free, new)):
            gen = torch.Generator(device=dev).manual_seed(int(self.seeds[i])) if self.seeds is not None else None
            row = Row(index=i, position=len(self.prompts[i]), generator=gen, pages=pages[r],
                       prompt_state=hidden[r].float())
            self.rows[slot] = row
            self.take(row, logits[r])

    def advance(self, active: list[int]) -> None:
        """Feed each active row its last token; sum the states; pick the next tokens."""
        dec, rows, dev = self.dec, self.rows, self.dec.device
        places = [dec.place(rows[s], s) for s in active]
        slots_t = torch.tensor(active, device=dev)
        hidden = dec.step(
            torch.tensor([rows[s].ids[-1] for s in active], device=dev),
            torch.tensor([rows[s].position for s in active], device=dev),
            torch.tensor([p for p, _ in places], device=dev),
            torch.tensor([o for _, o in places], device=dev),
            slots_t,
        )
        dec.sums.index_add_(0, slots_t, hidden.float())
        need = [j for j, s in enumerate(active) if len(rows[s].ids) < self.max_new]
        for s in active:
            rows[s].position += 1
            rows[s].fed += 1
        if need:
            logits = dec.w.head(hidden[need]).float()
            greedy = logits.argmax(-1).tolist() if self.seeds is None else [None] * len(need)
            for k, j in enumerate(need):
                self.take(rows[active[j]], logits[k], greedy[k])


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / max(temperature, 1e-6), dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
