"""The paged KV cache and the decoder's own forward pass over it, for ``teacher.decode``.

Keys and values live in a pool of fixed-size pages (``PAGE`` positions each); a row owns the
pages it has filled and a step writes one position per row, nothing is copied. Attention at a
step reads the pages in use and nothing else: per-page scores and one softmax across each row's
pages (:func:`paged_attention`), so a short row does not pay for a long neighbour. The forward
is a plain loop over the layers' own weights (``teacher.decode_families``).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from teacher import decode_families as families

PAGE = 32  # positions per KV page (16 and 64 measured within 10% of it on the demo teacher)
_MASKED = -1e30


@dataclass
class Row:
    index: int
    position: int  # model position of the next token fed (= tokens in the row so far)
    generator: torch.Generator | None
    pages: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    fed: int = 0  # generated tokens fed back (their final states are summed in PagedDecoder.sums)
    prompt_state: torch.Tensor | None = None  # the last prompt token's state (empty rationale)
    done: bool = False


class PagedDecoder:
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
            att = paged_attention(q.reshape(a, w.kv_heads, groups, w.head_dim) * layer["scaling"],
                                   self.k[li][:top], self.v[li][:top], page_row, valid)
            x = x + w.out(layer, att.reshape(a, -1))
            x = x + w.mlp(layer, w.norm2(layer, x))
        return w.final(x)

    def probe_logits(self, prompt: list[int], follow: list[int]) -> Iterator[torch.Tensor]:
        """Logits after ``prompt`` and after each token of ``follow`` (for :func:`supports`)."""
        hidden, (pages,) = self.prefill([prompt], [0])
        yield self.w.head(hidden[0]).float()
        row = Row(index=0, position=len(prompt), generator=None, pages=pages)
        t = lambda v: torch.tensor([v], device=self.device)  # noqa: E731
        for token in follow:
            page, offset = self.place(row, 0)
            hidden = self.step(t(token), t(row.position), t(page), t(offset), t(0))
            row.position += 1
            yield self.w.head(hidden[0]).float()

    def place(self, row: Row, slot: int) -> tuple[int, int]:
        """(page, offset) where ``row``'s next token goes; a new page when the last is full."""
        offset = row.position % PAGE
        if offset == 0 and len(row.pages) * PAGE <= row.position:
            row.pages.append(self.alloc(slot, row.position))
        return row.pages[row.position // PAGE], offset


def paged_attention(q, k_pages, v_pages, page_row, valid):
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


__all__ = ["PAGE", "PagedDecoder", "Row", "paged_attention"]
