"""Continuous-batching decoding for Llama-family causal LMs, greedy or sampled.

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
* the step is a plain loop over the layers' own weights (the model's RMSNorms, rotary module
  and projections; q/k/v and gate/up fused into one matmul each).

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

log = logging.getLogger(__name__)

PAGE = 32  # positions per KV page (16 and 64 measured within 10% of it on the demo teacher)
_MASKED = -1e30
_FAMILIES = ("llama", "mistral", "qwen2")  # decoder layers of the Llama layout


@dataclass
class Decoded:
    index: int  # position in the ``prompts`` given to :func:`decode`
    ids: list[int]  # generated tokens, EOS excluded
    embedding: torch.Tensor  # mean last hidden state over the fed rationale tokens (float32)


class _Weights:
    """The model's pieces in the layout the loop uses (views of its parameters, fused copies
    of q/k/v and gate/up)."""

    def __init__(self, model):
        base = model.base_model
        cfg = model.config.get_text_config()
        self.embed, self.rotary, self.norm = base.embed_tokens, base.rotary_emb, base.norm
        self.head = model.get_output_embeddings()
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.layers = []
        for layer in base.layers[: cfg.num_hidden_layers]:
            att, mlp = layer.self_attn, layer.mlp
            qkv = [att.q_proj, att.k_proj, att.v_proj]
            gate_up = [mlp.gate_proj, mlp.up_proj]
            self.layers.append({
                "ln1": layer.input_layernorm, "ln2": layer.post_attention_layernorm,
                "qkv_w": torch.cat([m.weight for m in qkv]).detach(),
                "qkv_b": torch.cat([m.bias for m in qkv]).detach() if att.q_proj.bias is not None else None,
                "o": att.o_proj, "scaling": float(att.scaling),
                "gu_w": torch.cat([m.weight for m in gate_up]).detach(),
                "gu_b": torch.cat([m.bias for m in gate_up]).detach() if mlp.gate_proj.bias is not None else None,
                "down": mlp.down_proj, "act": mlp.act_fn,
            })


def _structure_ok(model, context: int | None) -> bool:
    cfg = model.config.get_text_config()
    if getattr(cfg, "model_type", None) not in _FAMILIES or model.get_output_embeddings() is None:
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        if cfg.sliding_window < (context or getattr(cfg, "max_position_embeddings", 0)):
            return False  # sequences could outgrow the window, which this loop does not apply
    base = model.base_model
    need = ("embed_tokens", "rotary_emb", "norm", "layers")
    return all(hasattr(base, n) for n in need) and all(
        hasattr(layer, "self_attn") and hasattr(layer.self_attn, "q_proj") and hasattr(layer, "mlp")
        and hasattr(layer.mlp, "gate_proj") and not hasattr(layer.self_attn, "q_norm")
        for layer in base.layers)


def supports(model, context: int | None = None) -> bool:
    """True when this module's forward reproduces ``model``'s logits: a prompt prefilled, then
    three tokens decoded one at a time, checked against one full forward pass. ``context``: the
    longest prompt + new tokens the caller will decode (a sliding window must not be shorter)."""
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
    fed: int = 0  # generated tokens fed back (their hidden states are summed)
    state_sum: torch.Tensor | None = None
    prompt_state: torch.Tensor | None = None  # the last prompt token's state (empty rationale)
    done: bool = False


class _Decoder:
    """The page pool and the forward passes."""

    def __init__(self, model, slots: int, max_new_tokens: int, prompt_lengths: Sequence[int]):
        self.model, self.w = model, _Weights(model)
        self.device = model.device
        self.dtype = self.w.layers[0]["qkv_w"].dtype
        self.slots = slots
        self.k: list[torch.Tensor] = [self._zeros(0) for _ in self.w.layers]
        self.v: list[torch.Tensor] = [self._zeros(0) for _ in self.w.layers]
        self.owner = torch.zeros(0, dtype=torch.long, device=self.device)  # slot of each page
        self.fill = torch.zeros(0, dtype=torch.long, device=self.device)  # positions written
        self.free: list[int] = []  # a heap: lowest page first keeps the pages in use packed low
        self.in_use: list[bool] = []
        self.top = 0  # pages [0, top) hold every page in use
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
        self.in_use += [False] * extra
        for page in range(n, n + extra):
            heapq.heappush(self.free, page)

    # --- pages

    def alloc(self, slot: int) -> int:
        if not self.free:
            self._grow(max(self.slots, len(self.in_use) // 2))
        page = heapq.heappop(self.free)
        self.in_use[page] = True
        self.owner[page] = slot
        self.fill[page] = 0
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

    def _rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _split_qkv(self, layer, h):
        qkv = torch.nn.functional.linear(h, layer["qkv_w"], layer["qkv_b"])
        nq, nk = self.w.heads * self.w.head_dim, self.w.kv_heads * self.w.head_dim
        return qkv[..., :nq], qkv[..., nq:nq + nk], qkv[..., nq + nk:]

    def _mlp(self, layer, h):
        gu = torch.nn.functional.linear(h, layer["gu_w"], layer["gu_b"])
        gate, up = gu.chunk(2, dim=-1)
        return layer["down"](layer["act"](gate) * up)

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
        x = w.embed(ids)
        cos, sin = w.rotary(x, positions)
        cos, sin = cos[:, None], sin[:, None]
        causal = torch.ones((width, width), dtype=torch.bool, device=dev).tril()
        # padding keys are masked; a padding query sees itself only (no all-masked row, no NaN)
        allowed = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=dev)[None]
        allowed = allowed[:, None]
        pages = [[self.alloc(slot) for _ in range(-(-len(s) // PAGE))] for s, slot in zip(seqs, slots_of)]
        # (page, offset) of every real token, in (row, position) order
        page_idx = torch.tensor([pg[t // PAGE] for s, pg in zip(seqs, pages) for t in range(len(s))], device=dev)
        offset = torch.tensor([t % PAGE for s in seqs for t in range(len(s))], device=dev)
        for li, layer in enumerate(w.layers):
            h = _rms(layer["ln1"], x)
            q, k, v = self._split_qkv(layer, h)
            q = q.view(n, width, w.heads, w.head_dim).transpose(1, 2)
            k = k.view(n, width, w.kv_heads, w.head_dim).transpose(1, 2)
            v = v.view(n, width, w.kv_heads, w.head_dim).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            kt, vt = k.transpose(1, 2)[real], v.transpose(1, 2)[real]  # (tokens, kv_heads, dim)
            self.k[li][page_idx, :, offset] = kt
            self.v[li][page_idx, :, offset] = vt
            att = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, scale=layer["scaling"], enable_gqa=w.kv_heads != w.heads)
            x = x + layer["o"](att.transpose(1, 2).reshape(n, width, -1))
            x = x + self._mlp(layer, _rms(layer["ln2"], x))
        for pg, s in zip(pages, seqs):
            full, rest = divmod(len(s), PAGE)
            idx = torch.tensor(pg, device=dev)
            self.fill[idx] = PAGE
            if rest:
                self.fill[pg[-1]] = rest
        return w.norm(x[:, -1]), pages

    def step(self, tokens, positions, write_page, write_offset, slots_of) -> torch.Tensor:
        """One token for each of the A given rows; returns their final hidden states (A, hidden)."""
        w = self.w
        a = tokens.shape[0]
        x = w.embed(tokens)
        cos, sin = w.rotary(x[:, None], positions[:, None])
        cos, sin = cos[:, 0, None], sin[:, 0, None]  # (A, 1, dim)
        self.fill[write_page] += 1
        top = self.top
        owner = self.owner[:top]
        # the row (index into this step's A rows) of each page; pages of other rows are masked
        row_of_slot = torch.full((self.slots,), -1, dtype=torch.long, device=self.device)
        row_of_slot[slots_of] = torch.arange(a, device=self.device)
        page_row = row_of_slot[owner]
        live = (page_row >= 0) & (self.fill[:top] > 0)
        page_row = page_row.clamp(min=0)
        valid = live[:, None] & (torch.arange(PAGE, device=self.device)[None] < self.fill[:top, None])
        groups = w.heads // w.kv_heads
        for li, layer in enumerate(w.layers):
            h = _rms(layer["ln1"], x)
            q, k, v = self._split_qkv(layer, h)
            q = self._rope(q.view(a, w.heads, w.head_dim), cos, sin)
            k = self._rope(k.view(a, w.kv_heads, w.head_dim), cos, sin)
            self.k[li][write_page, :, write_offset] = k
            self.v[li][write_page, :, write_offset] = v.view(a, w.kv_heads, w.head_dim)
            att = _paged_attention(q.view(a, w.kv_heads, groups, w.head_dim) * layer["scaling"],
                                   self.k[li][:top], self.v[li][:top], page_row, valid)
            x = x + layer["o"](att.reshape(a, -1))
            x = x + self._mlp(layer, _rms(layer["ln2"], x))
        return w.norm(x)

    def probe_logits(self, prompt: list[int], follow: list[int]) -> Iterator[torch.Tensor]:
        """Logits after ``prompt`` and after each token of ``follow`` (for :func:`supports`)."""
        hidden, (pages,) = self.prefill([prompt], [0])
        yield self.w.head(hidden[0]).float()
        row = _Row(index=0, position=len(prompt), generator=None, pages=pages)
        for token in follow:
            page, offset = self.place(row, 0)
            hidden = self.step(torch.tensor([token], device=self.device),
                               torch.tensor([row.position], device=self.device),
                               torch.tensor([page], device=self.device), torch.tensor([offset], device=self.device),
                               torch.tensor([0], device=self.device))
            row.position += 1
            yield self.w.head(hidden[0]).float()

    def place(self, row: _Row, slot: int) -> tuple[int, int]:
        """(page, offset) where ``row``'s next token goes; a new page when the last is full."""
        offset = row.position % PAGE
        if offset == 0 and len(row.pages) * PAGE <= row.position:
            row.pages.append(self.alloc(slot))
        return row.pages[row.position // PAGE], offset


def _rms(norm, x):
    """The model's RMSNorm as one fused op (same result as the module's float32 formula)."""
    return torch.nn.functional.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


def _paged_attention(q, k_pages, v_pages, page_row, valid):
    """Softmax attention of each row's query over the pages it owns.

    q (A, kv_heads, groups, dim), pre-scaled; k/v_pages (P, kv_heads, PAGE, dim); page_row (P,)
    the row each page belongs to; valid (P, PAGE) the written positions of live pages."""
    a = q.shape[0]
    scores = torch.matmul(q[page_row], k_pages.transpose(-1, -2)).float()  # (P, kv_heads, groups, PAGE)
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
    refill_at = refill_at or max(1, slots // 4)
    dec = _Decoder(model, slots, max_new_tokens, [len(p) for p in prompts])
    dev = dec.device
    rows: list[_Row | None] = [None] * slots
    queue = list(range(len(prompts)))[::-1]  # pop() takes prompts in the given order

    def take(row: _Row, logits: torch.Tensor, greedy: int | None = None) -> None:
        if row.generator is not None:
            token = _sample(logits, temperature, top_p, row.generator)
        else:
            token = int(logits.argmax()) if greedy is None else greedy
        if token == eos_token_id:
            row.done = True
        else:
            row.ids.append(token)

    def refill() -> None:
        free = [s for s, r in enumerate(rows) if r is None]
        take_n = min(len(free), len(queue))
        if not take_n:
            return
        new = [queue.pop() for _ in range(take_n)]
        free = free[:take_n]
        hidden, pages = dec.prefill([list(prompts[i]) for i in new], free)
        logits = dec.w.head(hidden).float()
        for r, (slot, i) in enumerate(zip(free, new)):
            gen = torch.Generator(device=dev).manual_seed(int(seeds[i])) if seeds is not None else None
            row = _Row(index=i, position=len(prompts[i]), generator=gen, pages=pages[r],
                       prompt_state=hidden[r].float())
            rows[slot] = row
            take(row, logits[r])

    while True:
        for slot, row in enumerate(rows):  # rows that ended leave their slot
            if row is not None and (row.done or row.fed == max_new_tokens):
                rows[slot] = None
                dec.release(row.pages)
                emb = row.state_sum / row.fed if row.fed else row.prompt_state
                yield Decoded(row.index, row.ids, emb.cpu())
        free = sum(r is None for r in rows)
        if queue and free >= min(refill_at, len(queue)):
            refill()
        active = [s for s, r in enumerate(rows) if r is not None and not r.done]
        if not active:
            if any(r is not None for r in rows) or queue:
                continue  # rows that ended at their first token leave at the top of the loop
            return
        places = [dec.place(rows[s], s) for s in active]
        hidden = dec.step(
            torch.tensor([rows[s].ids[-1] for s in active], device=dev),
            torch.tensor([rows[s].position for s in active], device=dev),
            torch.tensor([p for p, _ in places], device=dev),
            torch.tensor([o for _, o in places], device=dev),
            torch.tensor(active, device=dev),
        )
        need = [j for j, s in enumerate(active) if len(rows[s].ids) < max_new_tokens]
        states = hidden.float()
        for j, s in enumerate(active):
            row = rows[s]
            row.position += 1
            row.fed += 1
            row.state_sum = states[j] if row.state_sum is None else row.state_sum + states[j]
        if need:
            logits = dec.w.head(hidden[need]).float()
            greedy = logits.argmax(-1).tolist() if seeds is None else [None] * len(need)
            for k, j in enumerate(need):
                take(rows[active[j]], logits[k], greedy[k])


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / max(temperature, 1e-6), dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
