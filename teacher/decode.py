"""Continuous-batching decoding for Llama, Mistral, Qwen2 and GPT-2 causal LMs, greedy or sampled.

Why not ``model.generate`` on padded batches: every row of a batch runs until the longest one
ends, the KV cache is copied at every step to grow it, each step attends over every row's
padding, and on a small model the per-step Python of the library costs more than the
arithmetic. Here, as in vLLM:

* at most ``slots`` rows decode together; a row leaves the step it ends and the next prompt is
  prefilled in its place, so no step is spent on finished rows;
* keys and values live in a pool of fixed-size pages; a row owns the pages it has filled and
  a step writes one position per row, nothing is copied;
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

import heapq
import logging
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from teacher import decode_families as families

log = logging.getLogger(__name__)

PAGE = 32  # positions per KV page (16 and 64 measured within 10% of it on the demo teacher)
_MASKED = -1e30


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
            got = list(_Decoder(model, 1, 16, [len(probe)]).probe_logits(probe[:9], probe[9:]))
        return torch.allclose(torch.stack(got), want, atol=1e-4, rtol=1e-3)
    except Exception as err:  # noqa: BLE001 (an architecture this loop does not handle)
        log.info("continuous decoding not available for %s: %s", type(model).__name__, err)
        return False


@dataclass
class _Row:
    index: int
    position: int  # model position of the next token fed (= tokens in the row so far)
    generator: torch.Generator | None
    pages: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    fed: int = 0  # generated tokens fed back (their final states are summed in _Decoder.sums)
    prompt_state: torch.Tensor | None = None  # the last prompt token's state (empty rationale)
    done: bool = False


class _Decoder:
    """The page pool and the forward passes."""

    def __init__(self, model, slots: int, max_new_tokens: int, prompt_lengths: Sequence[int]):
        self.model, self.w = model, families.layout(model)
        self.device = model.device
        self.dtype = self.w.dtype
        self.slots = slots
        self.windows = self.w.windows()
        longest = max(prompt_lengths) + max_new_tokens + 1
        self.rope = self.w.positions_table(longest, self.device)
        self.k: list[torch.Tensor] = [self._zeros(0) for _ in self.w.layers]
        self.v: list[torch.Tensor] = [self._zeros(0) for _ in self.w.layers]
        self.owner = torch.zeros(0, dtype=torch.long, device=self.device)  # slot of each page
        self.fill = torch.zeros(0, dtype=torch.long, device=self.device)  # positions written
        self.start = torch.zeros(0, dtype=torch.long, device=self.device)  # position of its first entry
        self.free: list[int] = []  # a heap: lowest page first keeps the pages in use packed low
        self.in_use: list[bool] = []
        self.top = 0  # pages [0, top) hold every page in use
        hidden = self.w.cfg.hidden_size
        self.sums = torch.zeros((slots, hidden), dtype=torch.float32, device=self.device)
        # Room for every slot holding an average prompt and half the new tokens; grows when short.
        mean_prompt = sum(prompt_lengths) / len(prompt_lengths)
        self._grow(slots * -(-int(mean_prompt + max_new_tokens / 2 + 1) // PAGE))

    def _zeros(self, n_pages: int) -> torch.Tensor:
        # zeros, not empty: a free page's scores are masked, but 0 * NaN garbage would still be NaN
        return torch.zeros((n_pages, self.w.kv_heads, PAGE, self.w.head_dim), dtype=self.dtype, device=self.device)

    def _grow(self, extra: int) -> None:
        n = len(self.in_use)
        self.k = [torch.cat([k, self._zeros(extra)]) for k in self.k]
        self.v = [torch.cat([v, self._zeros(extra)]) for v in self.v]
        self.owner = torch.cat([self.owner, self.owner.new_zeros(extra)])
        self.fill = torch.cat([self.fill, self.fill.new_zeros(extra)])
        self.start = torch.cat([self.start, self.start.new_zeros(extra)])
        self.in_use += [False] * extra
        for page in range(n, n + extra):
            heapq.heappush(self.free, page)

    # --- pages

    def alloc(self, slot: int, start: int) -> int:
        if not self.free:
            self._grow(max(self.slots, len(self.in_use) // 2))
        page = heapq.heappop(self.free)
        self.in_use[page] = True
        self.owner[page] = slot
        self.fill[page] = 0
        self.start[page] = start
        self.top = max(self.top, page + 1)
        return page

    def release(self, pages: list[int]) -> None:
        if not pages:
            return
        self.fill[torch.tensor(pages, device=self.device)] = 0
        for p in pages:
            self.in_use[p] = False
            heapq.heappush(self.free, p)
        while self.top and not self.in_use[self.top - 1]:
            self.top -= 1

    # --- forward

    def _rotary(self, positions):
        """cos/sin at ``positions``, shaped to broadcast over the heads (gathered once per pass)."""
        if self.rope is None:
            return None
        return self.rope[0][positions].unsqueeze(-2), self.rope[1][positions].unsqueeze(-2)

    def _heads(self, qkv, rotary):
        """Fused projections (..., (H + 2 KV) * D) -> q (..., H, D), k and v (..., KV, D), with
        q and k rotated together (one rotary op for both)."""
        w = self.w
        qkv = qkv.view(*qkv.shape[:-1], w.heads + 2 * w.kv_heads, w.head_dim)
        qk, v = qkv[..., : w.heads + w.kv_heads, :], qkv[..., w.heads + w.kv_heads:, :]
        if rotary is not None:
            cos, sin = rotary
            half = qk.shape[-1] // 2
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
        return qk[..., : w.heads, :], qk[..., w.heads:, :], v

    def prefill(self, seqs: list[list[int]], slots_of: list[int]) -> tuple[torch.Tensor, list[list[int]]]:
        """Left-padded causal pass over new prompts; their keys/values go to fresh pages.
        Returns the last position's final hidden state per prompt and each prompt's pages."""
        w, dev = self.w, self.device
        n, width = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((n, width), 0, dtype=torch.long, device=dev)
        real = torch.zeros((n, width), dtype=torch.bool, device=dev)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):] = torch.tensor(s, device=dev)
            real[r, width - len(s):] = True
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        x = w.embed(ids, positions)
        masks = {window: self._prefill_mask(real, positions, window) for window in set(self.windows)}
        rotary = self._rotary(positions)
        pages = [[self.alloc(slot, j * PAGE) for j in range(-(-len(s) // PAGE))] for s, slot in zip(seqs, slots_of)]
        # (page, offset) of every real token, in (row, position) order
        page_idx = torch.tensor([pg[t // PAGE] for s, pg in zip(seqs, pages) for t in range(len(s))], device=dev)
        offset = torch.tensor([t % PAGE for s in seqs for t in range(len(s))], device=dev)
        for li, layer in enumerate(w.layers):
            q, k, v = self._heads(w.qkv(layer, w.norm1(layer, x)), rotary)
            self.k[li][page_idx, :, offset] = k[real]
            self.v[li][page_idx, :, offset] = v[real]
            att = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=masks[self.windows[li]],
                scale=layer["scaling"], enable_gqa=w.kv_heads != w.heads)
            x = x + w.out(layer, att.transpose(1, 2).reshape(n, width, -1))
            x = x + w.mlp(layer, w.norm2(layer, x))
        for pg, s in zip(pages, seqs):
            self.fill[torch.tensor(pg, device=dev)] = PAGE
            if len(s) % PAGE:
                self.fill[pg[-1]] = len(s) % PAGE
        return w.final(x[:, -1]), pages

    @staticmethod
    def _prefill_mask(real, positions, window: int | None):
        width = real.shape[1]
        causal = torch.ones((width, width), dtype=torch.bool, device=real.device).tril()
        allowed = causal[None] & real[:, None, :]
        if window:  # key position > query position - window
            allowed = allowed & (positions[:, None, :] > positions[:, :, None] - window)
        # a padding query sees itself only (no all-masked row, no NaN)
        return (allowed | torch.eye(width, dtype=torch.bool, device=real.device)[None])[:, None]

    def _step_masks(self, slots_of, positions):
        """Per distinct window: (row of each page in use, which of its positions a row's query sees)."""
        top, dev = self.top, self.device
        row_of_slot = torch.full((self.slots,), -1, dtype=torch.long, device=dev)
        row_of_slot[slots_of] = torch.arange(slots_of.shape[0], device=dev)
        page_row = row_of_slot[self.owner[:top]]
        live = (page_row >= 0) & (self.fill[:top] > 0)
        page_row = page_row.clamp(min=0)
        offsets = torch.arange(PAGE, device=dev)[None]
        valid = live[:, None] & (offsets < self.fill[:top, None])
        out = {}
        for window in set(self.windows):
            if window:
                seen = self.start[:top, None] + offsets > positions[page_row][:, None] - window
                out[window] = (page_row, valid & seen)
            else:
                out[window] = (page_row, valid)
        return out

    def step(self, tokens, positions, write_page, write_offset, slots_of) -> torch.Tensor:
        """One token for each of the A given rows; returns their final hidden states (A, hidden)."""
        w = self.w
        a = tokens.shape[0]
        x = w.embed(tokens, positions)
        self.fill[write_page] += 1
        masks = self._step_masks(slots_of, positions)
        rotary = self._rotary(positions)
        top = self.top
        groups = w.heads // w.kv_heads
        for li, layer in enumerate(w.layers):
            q, k, v = self._heads(w.qkv(layer, w.norm1(layer, x)), rotary)
            self.k[li][write_page, :, write_offset] = k
            self.v[li][write_page, :, write_offset] = v
            page_row, valid = masks[self.windows[li]]
            att = _paged_attention(q.reshape(a, w.kv_heads, groups, w.head_dim) * layer["scaling"],
                                   self.k[li][:top], self.v[li][:top], page_row, valid)
            x = x + w.out(layer, att.reshape(a, -1))
            x = x + w.mlp(layer, w.norm2(layer, x))
        return w.final(x)

    def probe_logits(self, prompt: list[int], follow: list[int]) -> Iterator[torch.Tensor]:
        """Logits after ``prompt`` and after each token of ``follow`` (for :func:`supports`)."""
        hidden, (pages,) = self.prefill([prompt], [0])
        yield self.w.head(hidden[0]).float()
        row = _Row(index=0, position=len(prompt), generator=None, pages=pages)
        t = lambda v: torch.tensor([v], device=self.device)  # noqa: E731
        for token in follow:
            page, offset = self.place(row, 0)
            hidden = self.step(t(token), t(row.position), t(page), t(offset), t(0))
            row.position += 1
            yield self.w.head(hidden[0]).float()

    def place(self, row: _Row, slot: int) -> tuple[int, int]:
        """(page, offset) where ``row``'s next token goes; a new page when the last is full."""
        offset = row.position % PAGE
        if offset == 0 and len(row.pages) * PAGE <= row.position:
            row.pages.append(self.alloc(slot, row.position))
        return row.pages[row.position // PAGE], offset


def _paged_attention(q, k_pages, v_pages, page_row, valid):
    """Softmax attention of each row's query over the pages it owns.

    q (A, kv_heads, groups, dim), pre-scaled; k/v_pages (P, kv_heads, PAGE, dim); page_row (P,)
    the row each page belongs to; valid (P, PAGE) the positions of each page the row sees."""
    a = q.shape[0]
    # keys times the query (a matrix-vector product per page and head; this orientation runs
    # ~1.5x faster on a CPU than the query times the transposed keys)
    scores = torch.matmul(k_pages, q[page_row].transpose(-1, -2)).transpose(-1, -2).float()  # (P, k, g, PAGE)
    # a large finite value, not -inf: a dead page (no row) then weighs exp(-huge) = 0, not NaN
    scores = scores.masked_fill(~valid[:, None, None, :], _MASKED)
    page_max = scores.amax(-1)  # (P, k, g)
    row_max = torch.full((a, *page_max.shape[1:]), float("-inf"), dtype=scores.dtype, device=q.device)
    row_max = row_max.scatter_reduce(0, page_row[:, None, None].expand_as(page_max), page_max, "amax")
    weights = torch.exp(scores - row_max[page_row][..., None])
    denom = torch.zeros_like(row_max).index_add_(0, page_row, weights.sum(-1))
    out = torch.matmul(weights.to(v_pages.dtype), v_pages).float()  # (P, kv_heads, groups, dim)
    out = torch.zeros((a, *out.shape[1:]), dtype=out.dtype, device=q.device).index_add_(0, page_row, out)
    return (out / denom[..., None]).to(q.dtype)


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
        self.dec = _Decoder(model, slots, max_new_tokens, [len(p) for p in prompts])
        self.rows: list[_Row | None] = [None] * slots
        self.queue = list(range(len(prompts)))[::-1]  # pop() takes prompts in the given order

    def take(self, row: _Row, logits: torch.Tensor, greedy: int | None = None) -> None:
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
            row = _Row(index=i, position=len(self.prompts[i]), generator=gen, pages=pages[r],
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
