"""``kdistill teacher generate``: a rationale for every train/validate study, into the cache.

Fast: identical prompts are generated once; prompts are sorted by expected length and decoded
with continuous batching over a paged KV cache (``teacher.decode``: a finished row leaves its
slot at once and the next prompt takes it), on the base model with the LoRA merged in.
Scales: studies are split across processes (``accelerate`` ``split_between_processes``; run
with ``torchrun``/``accelerate launch``), each rank writes its own shards, the main process
merges; or ``backend: vllm`` when vllm is installed. Resumable: shards are written as batches
finish and a rerun skips studies already written (``teacher.cache``). Checked: every
rationale is labelled by the project's labeler and flagged ``consistent`` or not; inconsistent
ones are regenerated with sampling up to ``max_retries`` times, then kept and flagged.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch

from kdistill import config as cfglib
from kdistill.config import ConfigError
from kdistill.errors import DataError
from kdistill.training import set_num_threads
from teacher import cache
from kdistill.labeler.consistency import LabelFn, default_label_fn, is_consistent
from teacher.modeling import load_teacher
from teacher.prompts import PROMPT_VERSION, prompt_for_study

log = logging.getLogger(__name__)

# Settings that change what is generated: hashed into gen_config_hash (batch size and device
# do not change greedy outputs, so a resume may use other values).
GEN_KEYS = ("backend", "max_new_tokens", "context", "do_sample", "temperature", "top_p", "num_beams",
            "max_retries", "retry_temperature", "seed")


@dataclasses.dataclass
class TeacherGenerateConfig:
    teacher: str | None = None  # teacher folder; default: the teacher_train stage's output
    data_root: str | None = None  # default: the run's dataset root
    splits: list[str] = dataclasses.field(default_factory=lambda: ["train", "validate"])
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = 64  # rows decoded together (continuous batching), and rows per shard; raise on a GPU
    max_new_tokens: int = 256  # phantom rationales: 95th percentile ~215 tokens
    context: int = 0  # prompt + rationale tokens; 0: the model's max_position_embeddings
    do_sample: bool = False  # greedy by default
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    max_retries: int = 3  # sampled regenerations of an inconsistent rationale
    retry_temperature: float = 0.7
    dtype: str = "float32"
    cpu: bool = False
    num_threads: int = 0
    on_error: Literal["raise", "skip"] = "raise"  # bad studies when loading the dataset
    limit: int = 0  # 0: every study; N: the first N (quick runs)
    seed: int = 0
    # > 0: also store the teacher's top-k next-token log-probs at every rationale position
    # (teacher-forced on the rationale as the student tokenises it) for token-level KD
    # (student loss.tok); costs one forward pass per unique prompt and k*8 bytes per token.
    topk: int = 0
    force: bool = False  # discard a cache made with another teacher / config

    RENAMED: ClassVar[dict] = {"threads": "num_threads"}

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.num_beams < 1 or self.max_retries < 0:
            raise ValueError("batch_size, max_new_tokens, num_beams >= 1 and max_retries >= 0 are required")
        if self.topk < 0:
            raise ValueError(f"topk must be >= 0, got {self.topk}")


def _gen_config(cfg: TeacherGenerateConfig) -> dict[str, Any]:
    # topk joins only when set, so caches made before it existed keep their hash
    return {**{k: getattr(cfg, k) for k in GEN_KEYS}, **({"topk": cfg.topk} if cfg.topk else {})}


def gen_config_hash(cfg: TeacherGenerateConfig) -> str:
    return cfglib.config_hash({**_gen_config(cfg), "prompt_version": PROMPT_VERSION})


# --- backends ---------------------------------------------------------------------------------

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

    def __init__(self, model, tok, cfg: TeacherGenerateConfig, device):
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

    def __init__(self, model, tok, cfg: TeacherGenerateConfig, device, out_dir: Path):
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


# --- the generation run -----------------------------------------------------------------------

def generate_rationales(
    studies: Sequence[Any],
    teacher_dir: str | Path,
    out_dir: str | Path,
    cfg: TeacherGenerateConfig,
    label_fn: LabelFn | None = None,
) -> dict[str, Any]:
    """Rationales for ``studies`` (``Study`` objects) into the cache at ``out_dir``; returns the
    summary (counts and speed). Safe to rerun: finished studies are skipped."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if not studies:
        raise DataError(out_dir, "no studies to generate rationales for")
    if cfg.backend == "vllm":
        require_vllm()
    label_fn = label_fn or default_label_fn()
    set_num_threads(cfg.num_threads)
    state = PartialState(cpu=cfg.cpu)
    device = torch.device("cpu") if cfg.cpu else state.device
    model, tok, meta = load_teacher(teacher_dir, device=device, dtype=cfg.dtype)
    tok.padding_side = "left"
    context = cfg.context or int(getattr(model.config, "max_position_embeddings", 2048))
    max_prompt = context - cfg.max_new_tokens
    if max_prompt < 16:
        raise ConfigError(f"context {context} leaves {max_prompt} prompt tokens after max_new_tokens "
                          f"{cfg.max_new_tokens}; raise context or lower max_new_tokens")

    # Prompts (report side cut when too long). Identical prompts are generated once.
    count = lambda text: len(tok.encode(text, add_special_tokens=False)) + 1  # noqa: E731 (+ BOS)
    built = [prompt_for_study(s, count, max_prompt) for s in studies]
    n_truncated = sum(b.truncated for b in built)
    if n_truncated:
        log.warning("%d of %d prompts were longer than %d tokens: their reports were cut", n_truncated,
                    len(built), max_prompt)
    gen_hash = gen_config_hash(cfg)
    teacher_id = meta["teacher_id"]
    cache_meta = {"teacher_id": teacher_id, "adapter_hash": meta["adapter_hash"], "base": meta["base"],
                  "prompt_version": PROMPT_VERSION, "gen_config_hash": gen_hash,
                  "gen_config": _gen_config(cfg), "tokenizer_hash": cache.tokenizer_fingerprint(tok)}
    if state.is_main_process:
        cache.check_metadata(out_dir, cache_meta, cfg.force)
    state.wait_for_everyone()

    done = cache.done_keys(out_dir)
    groups: dict[str, list[int]] = {}
    for i, (study, prompt) in enumerate(zip(studies, built)):
        if study.study_id not in done:
            groups.setdefault(prompt.text, []).append(i)
    # Longest first (an OOM shows up at once), ties by hash: the same order on every rank and
    # every rerun, so a resumed run forms the same batches as an uninterrupted one.
    # Batches of similar output length waste fewer decode steps: a rationale's length follows
    # its number of findings, so sort by that first, then by prompt length.
    units = sorted(groups.items(), key=lambda kv: (-_n_findings(kv[0]), -count(kv[0]),
                                                   hashlib.sha256(kv[0].encode()).hexdigest()))
    units = _round_robin_order(units, state.num_processes)
    if done:
        log.info("resuming: %d studies already in %s, %d to go", len(done), out_dir, sum(len(v) for _, v in units))

    backend = (VLLMBackend(model, tok, cfg, device, out_dir) if cfg.backend == "vllm"
               else HFBackend(model, tok, cfg, device))
    writer = cache.ShardWriter(out_dir, state.process_index, with_topk=cfg.topk > 0)
    started = time.time()
    with state.split_between_processes(units) as mine:
        n_rows = sum(len(idx) for _, idx in mine)
        bar = tqdm(total=n_rows, unit="row", desc=f"rationales (rank {state.process_index})",
                   disable=not state.is_main_process)
        # Units stream out of the decoder as they finish; each ``batch_size`` of them is checked,
        # retried where inconsistent, and written as a shard (what a rerun will skip).
        pending: list[tuple[tuple[str, list[int]], Generated]] = []
        flushed = 0
        first = backend.stream([p for p, _ in mine], sample=cfg.do_sample,
                               seeds=[_row_seed(cfg, p, 0) for p, _ in mine], temperature=cfg.temperature)
        for j, out in first:
            pending.append((mine[j], out))
            if len(pending) >= cfg.batch_size or flushed + len(pending) == len(mine):
                rows = _finish_units(pending, studies, built, backend, label_fn, cfg, teacher_id, gen_hash)
                writer.write(rows)
                flushed += len(pending)
                pending = []
                bar.update(len(rows))
                bar.set_postfix(tok_s=f"{backend.tokens / max(time.time() - started, 1e-9):.0f}")
        bar.close()
    seconds = time.time() - started
    if isinstance(backend, VLLMBackend):  # the merged copy was only for vllm to load
        shutil.rmtree(out_dir / ".merged", ignore_errors=True)
    log.info("rank %d wrote %d rows (%d generated tokens) in %.1fs", state.process_index, writer.written,
             backend.tokens, seconds)
    state.wait_for_everyone()

    summary: dict[str, Any] = {}
    if state.is_main_process:
        _, counts = cache.merge(out_dir, [s.study_id for s in studies])
        summary = {
            **counts,
            "consistent_fraction": round(counts["consistent"] / max(counts["rows"], 1), 4),
            "unique_prompts_this_run": len(units),
            "resumed_rows": len(done),
            "processes": state.num_processes,
            "teacher_id": teacher_id,
            "gen_config_hash": gen_hash,
            "prompt_version": PROMPT_VERSION,
            "context": context,
            "generated_tokens": backend.tokens,  # this (main) process
            "rows_per_s": round(writer.written / max(seconds, 1e-9), 2),
            "tokens_per_s": round(backend.tokens / max(seconds, 1e-9), 1),
        }
        cfglib.save_json(summary, out_dir / "summary.json")
        log.info("rationale cache %s: %d rows, %.1f%% consistent, %d retried, %d truncated", out_dir / "dataset",
                 counts["rows"], 100 * summary["consistent_fraction"], counts["retried"], counts["truncated"])
    state.wait_for_everyone()
    return summary


def _row_seed(cfg: TeacherGenerateConfig, prompt: str, attempt: int) -> int:
    """A prompt's sampling seed: hangs on its text, not its position, so a resumed run samples alike."""
    return cfg.seed + int(hashlib.sha256(prompt.encode()).hexdigest()[:7], 16) + 7919 * attempt


def _finish_units(pending, studies, built, backend, label_fn, cfg: TeacherGenerateConfig, teacher_id: str,
                  gen_hash: str) -> list[dict[str, Any]]:
    """Rows for decoded units ((prompt, study indices), output): check, regenerate the
    inconsistent ones with sampling, embed where decoding did not."""
    units = [u for u, _ in pending]
    outputs = [g for _, g in pending]
    prompts = [p for p, _ in units]
    ok = _check(outputs, units, studies, label_fn)
    tries = [1] * len(units)
    for attempt in range(1, cfg.max_retries + 1):
        todo = [j for j, good in enumerate(ok) if not good]
        if not todo:
            break
        again = backend.generate([prompts[j] for j in todo], sample=True,
                                 seeds=[_row_seed(cfg, prompts[j], attempt) for j in todo],
                                 temperature=cfg.retry_temperature)
        good_again = _check(again, [units[j] for j in todo], studies, label_fn)
        for j, out, good in zip(todo, again, good_again):
            tries[j] = attempt + 1
            if good:  # else keep the first (greedy, reproducible) one and flag it
                outputs[j], ok[j] = out, True
    missing = [j for j, g in enumerate(outputs) if g.embedding is None]  # vllm, beams
    if missing:
        for j, emb in zip(missing, backend.embed([prompts[j] for j in missing], [outputs[j].ids for j in missing])):
            outputs[j] = outputs[j]._replace(embedding=emb)
    topk = backend.token_topk(prompts, [g.text for g in outputs], cfg.topk) if cfg.topk else [None] * len(units)
    rows = []
    for (prompt, idxs), (text, _, emb), good, n, top in zip(units, outputs, ok, tries, topk):
        extra = {"topk_ids": top[0].tolist(), "topk_logprobs": top[1].tolist()} if top is not None else {}
        for i in idxs:
            rows.append({
                "study_id": studies[i].study_id, "prompt": prompt, "rationale": text, "teacher_id": teacher_id,
                "gen_config_hash": gen_hash, "embedding": emb.tolist(), "consistent": bool(good),
                "tries": n, "truncated": built[i].truncated, **extra,
            })
    return rows


def _check(outputs, units, studies, label_fn) -> list[bool]:
    """A prompt's rationale is good when it is consistent with every study sharing the prompt."""
    labels = np.asarray(label_fn([g.text for g in outputs]))
    return [all(is_consistent(lab, studies[i].labels) for i in idxs) for lab, (_, idxs) in zip(labels, units)]


def _n_findings(prompt: str) -> int:
    line = prompt.rsplit("\nFindings: ", 1)[-1].split("\n", 1)[0]
    return 0 if line == "none" else line.count(";") + 1


def _round_robin_order(items: list, n: int) -> list:
    """Reorder so that contiguous near-equal chunks (split_between_processes) are round-robin
    picks of ``items``: every rank gets long and short prompts alike."""
    if n <= 1:
        return items
    return [x for r in range(n) for x in items[r::n]]


# --- entry points -----------------------------------------------------------------------------

def load_study_list(data, splits: Sequence[str], on_error: str = "raise", limit: int = 0) -> list:
    """The studies of ``splits`` of ``data`` (a ``kdistill.data.sources.DataSource``), the first
    ``limit`` of them when set."""
    if not data.has_reports:
        raise DataError(data.root, f"source {data.name!r} has no report text: the teacher writes rationales from "
                                   "reports, so this stage cannot run on it")
    studies = data.load_studies(splits=list(splits), on_error=on_error)
    studies = [s for s in studies if s.split in splits]
    if limit:
        studies = studies[:limit]
    if not studies:
        raise DataError(data.root, f"no studies in splits {list(splits)}")
    return studies


def run_stage(cfg: TeacherGenerateConfig, ctx) -> dict[str, Any]:
    from kdistill.data.sources import open_source

    data = open_source(ctx.data.name, cfg.data_root) if cfg.data_root else ctx.data
    studies = load_study_list(data, cfg.splits, cfg.on_error, cfg.limit)
    teacher_dir = cfg.teacher or ctx.stage_dir("teacher_train")
    return generate_rationales(studies, teacher_dir, ctx.stage_dir("teacher_generate"), cfg)


def main(argv: list[str] | None = None, prog: str = "kdistill teacher generate") -> int:
    from kdistill.command import add_config_arguments, add_data_arguments, data_source, stage_config
    from kdistill.data.sources import open_source

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_data_arguments(parser, required=False, what="default: the config's data_root")
    parser.add_argument("--teacher", help="teacher folder written by `kdistill teacher train`")
    parser.add_argument("--out", required=True, help="rationale folder (the cache is <out>/dataset)")
    parser.add_argument("--force", action="store_true", help="discard a cache made with another teacher/config")
    add_config_arguments(parser, "teacher_generate", example="batch_size=64 backend=vllm")
    args = parser.parse_intermixed_args(argv)
    cfg = stage_config(TeacherGenerateConfig, args, "teacher_generate")
    if args.force:
        cfg.force = True
    data = data_source(args) or (open_source(args.source, cfg.data_root) if cfg.data_root else None)
    teacher_dir = args.teacher or cfg.teacher
    if data is None or teacher_dir is None:
        raise DataError(None, "give --data-root ROOT and --teacher DIR")
    studies = load_study_list(data, cfg.splits, cfg.on_error, cfg.limit)
    summary = generate_rationales(studies, teacher_dir, args.out, cfg)
    from accelerate import PartialState

    PartialState().destroy_process_group()
    if summary:
        print(json.dumps(summary, indent=2))
    return 0
