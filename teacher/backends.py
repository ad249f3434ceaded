"""Decoding backends of ``teacher generate``: transformers (continuous batching through
``teacher.decode``, or ``model.generate``) and vLLM. A backend turns prompts into
:class:`Generated` outputs as they finish, and computes embeddings and top-k log-probs by
teacher-forced passes where decoding did not.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from kdistill.config import ConfigError

log = logging.getLogger(__name__)


class Generated(NamedTuple):
    text: str
    ids: list[int]  # generated token ids, EOS and padding removed
    embedding: np.ndarray | None = None  # pooled last hidden state, when decoding produced it


class HFBackend:
    """Decoding with a transformers model.

    Greedy and sampled decoding run through ``teacher.decode``: continuous batching over
    ``batch_size`` slots of a preallocated KV cache, each prompt leaving its slot the step it
    ends. Beam search, and models whose logits are not ``lm_head(last_hidden_state)``, use
    ``model.generate`` on left-padded batches. A CUDA out-of-memory halves the batch and goes on.
    """

    def __init__(self, model, tok, cfg, device):
        from teacher import decode

        self.model, self.tok, self.cfg, self.device = model, tok, cfg, device
        self.max_batch = cfg.batch_size
        self.tokens = 0  # generated tokens, for tokens/s
        context = cfg.context or int(getattr(model.config, "max_position_embeddings", 0)) or None
        self.continuous = decode.supports(model, context)
        if not self.continuous:
            log.info("%s: logits are not lm_head(last hidden state); decoding with model.generate",
                     type(model).__name__)

    def prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tok.encode(prompt, add_special_tokens=False)
        return ([self.tok.bos_token_id] if self.tok.bos_token_id is not None else []) + ids

    def _left_pad(self, seqs: Sequence[Sequence[int]]):
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s):] = torch.tensor(list(s))
                mask[i, width - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _halve(self, size: int, err: Exception) -> None:
        if size <= 1:
            raise err
        self.max_batch = max(1, size // 2)
        log.warning("CUDA out of memory on a batch of %d; going on with batches of %d", size, self.max_batch)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def stream(self, prompts: list[str], sample: bool, seeds: Sequence[int] | None = None,
               temperature: float = 1.0) -> Iterator[tuple[int, Generated]]:
        """(index into ``prompts``, output) as each prompt finishes. Sampling draws row j from a
        generator seeded with ``seeds[j]``, so a row's sample does not depend on its batch."""
        if self.continuous and (sample or self.cfg.num_beams == 1):
            yield from self._stream_continuous(prompts, seeds if sample else None, temperature)
        else:
            yield from self._stream_generate(prompts, seeds if sample else None, temperature)

    def generate(self, prompts: list[str], sample: bool, seeds: Sequence[int] | None = None,
                 temperature: float = 1.0) -> list[Generated]:
        out = dict(self.stream(prompts, sample, seeds, temperature))
        return [out[j] for j in range(len(prompts))]

    def _stream_continuous(self, prompts, seeds, temperature):
        from teacher import decode

        ids = [self.prompt_ids(p) for p in prompts]
        todo = list(range(len(prompts)))
        while todo:
            finished = set()
            try:
                for d in decode.decode(
                    self.model, [ids[j] for j in todo], slots=self.max_batch, max_new_tokens=self.cfg.max_new_tokens,
                    eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id,
                    seeds=None if seeds is None else [seeds[j] for j in todo], temperature=temperature,
                    top_p=self.cfg.top_p if seeds is not None else 1.0,
                ):
                    j = todo[d.index]
                    finished.add(j)
                    yield j, self._output(d.ids, d.embedding)
            except torch.cuda.OutOfMemoryError as err:
                self._halve(min(self.max_batch, len(todo) - len(finished)), err)
            todo = [j for j in todo if j not in finished]

    def _stream_generate(self, prompts, seeds, temperature):
        """``model.generate`` on left-padded chunks; sampled rows one at a time (their own seed)."""
        order, i = list(range(len(prompts))), 0
        while i < len(order):
            size = 1 if seeds is not None else self.max_batch
            chunk = order[i:i + size]
            try:
                outs = self._generate([prompts[j] for j in chunk], seeds is not None,
                                      seeds[chunk[0]] if seeds is not None else 0, temperature)
            except torch.cuda.OutOfMemoryError as err:
                self._halve(len(chunk), err)
                continue
            yield from zip(chunk, outs)
            i += len(chunk)

    def _output(self, ids: list[int], embedding: torch.Tensor | None) -> Generated:
        self.tokens += len(ids)
        emb = None if embedding is None else embedding.float().numpy().astype(np.float32)
        return Generated(self.tok.decode(ids, skip_special_tokens=True).strip(), ids, emb)

    @torch.no_grad()
    def _generate(self, prompts: list[str], sample: bool, seed: int, temperature: float) -> list[Generated]:
        from transformers import GenerationConfig

        ids, mask = self._left_pad([self.prompt_ids(p) for p in prompts])
        gen = GenerationConfig(
            max_new_tokens=self.cfg.max_new_tokens, do_sample=sample,
            num_beams=1 if sample else self.cfg.num_beams,
            temperature=temperature if sample else None,
            top_p=self.cfg.top_p if sample else None, top_k=None if not sample else 0,
            pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
            bos_token_id=self.tok.bos_token_id, use_cache=True,
        )
        if sample:
            torch.manual_seed(seed)
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        results = []
        for row in out[:, ids.shape[1]:].tolist():
            if self.tok.eos_token_id in row:
                row = row[: row.index(self.tok.eos_token_id)]
            results.append(self._output([t for t in row if t != self.tok.pad_token_id], None))  # embed() later
        return results

    def _forward_in_chunks(self, fn, pairs: list) -> list:
        """``fn`` over chunks of at most ``max_batch`` (prompt, tokens) pairs; a CUDA
        out-of-memory halves the chunk and goes on."""
        out, i = [], 0
        while i < len(pairs):
            chunk = pairs[i:i + self.max_batch]
            try:
                out.extend(fn(chunk))
            except torch.cuda.OutOfMemoryError as err:
                self._halve(len(chunk), err)
                continue
            i += len(chunk)
        return out

    def embed(self, prompts: list[str], rationale_ids: list[list[int]]) -> list[np.ndarray]:
        return self._forward_in_chunks(self._embed, list(zip(prompts, rationale_ids)))

    @torch.no_grad()
    def _embed(self, pairs) -> list[np.ndarray]:
        """Mean of the last hidden state over the rationale's tokens (the last prompt token's
        state when the rationale is empty)."""
        seqs = [self.prompt_ids(p) + list(r) for p, r in pairs]
        ids, mask = self._left_pad(seqs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padding does not shift positions
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        out = []
        for b, (_, r) in enumerate(pairs):
            n = max(len(r), 1)
            out.append(hidden[b, -n:].float().mean(0).cpu().numpy().astype(np.float32))
        return out

    def token_topk(self, prompts: list[str], texts: list[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per rationale, (ids, log-probs), each (n + 1, k): the teacher's top-k next-token
        distribution at every position of ``text`` as the student tokenises it (no special
        tokens), then at the position of eos. Teacher-forced, so one pass serves any backend and
        the rows line up with the student's targets token for token."""
        tokens = [list(t) for t in self.tok(texts, add_special_tokens=False)["input_ids"]] if texts else []
        return self._forward_in_chunks(lambda chunk: self._token_topk(chunk, k), list(zip(prompts, tokens)))

    @torch.no_grad()
    def _token_topk(self, pairs, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        seqs = [self.prompt_ids(p) + r + [self.tok.eos_token_id] for p, r in pairs]
        ids, mask = self._left_pad(seqs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        out = []
        for b, (_, r) in enumerate(pairs):
            n = len(r) + 1  # the rationale's tokens and eos, predicted from the position before each
            logp = torch.log_softmax(logits[b, -n - 1:-1].float(), dim=-1)
            top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            out.append((top.indices.cpu().numpy().astype(np.int32), top.values.cpu().numpy().astype(np.float32)))
        return out


class VLLMBackend(HFBackend):
    """Decoding with vLLM (the merged teacher saved once to ``<out>/.merged``); embeddings
    still come from the transformers model."""

    def __init__(self, model, tok, cfg, device, out_dir: Path):
        super().__init__(model, tok, cfg, device)
        import vllm

        merged = out_dir / ".merged"
        model.save_pretrained(str(merged), safe_serialization=True)
        tok.save_pretrained(str(merged))
        self._vllm = vllm
        self.llm = vllm.LLM(model=str(merged), dtype=cfg.dtype if cfg.dtype != "float32" else "auto",
                            seed=cfg.seed, trust_remote_code=False)

    def stream(self, prompts: list[str], sample: bool, seeds: Sequence[int] | None = None,
               temperature: float = 1.0) -> Iterator[tuple[int, Generated]]:
        params = [self._vllm.SamplingParams(
            max_tokens=self.cfg.max_new_tokens, seed=int(seeds[j]) if sample else self.cfg.seed,
            temperature=temperature if sample else 0.0, top_p=self.cfg.top_p if sample else 1.0,
        ) for j in range(len(prompts))]
        requests = [{"prompt_token_ids": self.prompt_ids(p)} for p in prompts]
        for j, res in enumerate(self.llm.generate(requests, params)):  # vllm schedules them itself
            ids = [t for t in res.outputs[0].token_ids if t not in (self.tok.eos_token_id, self.tok.pad_token_id)]
            self.tokens += len(ids)
            yield j, Generated(res.outputs[0].text.strip(), ids)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("backend 'vllm' needs the vllm package, which is not installed "
                          "(pip install vllm, on a machine with a GPU), or use backend: hf")
