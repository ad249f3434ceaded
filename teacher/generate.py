"""``kdistill teacher generate``: a rationale for every train/validate study, into the cache.

Fast: identical prompts are generated once; prompts are sorted by expected length and decoded
with continuous batching over a paged KV cache (``teacher.decode``: a finished row leaves its
slot at once and the next prompt takes it), on the base model with the LoRA merged in
(``teacher.backends``).
Scales: studies are split across processes (``accelerate`` ``split_between_processes``; run
with ``torchrun``/``accelerate launch``), each rank writes its own shards, the main process
merges; or ``backend: vllm`` when vllm is installed. Resumable: shards are written as batches
finish and a rerun skips studies already written (``teacher.cache``). Checked: every
rationale is labelled by the project's labeler and flagged ``consistent`` or not; inconsistent
ones are regenerated with sampling up to ``max_retries`` times, then kept and flagged
(``teacher.checked``, retries pooled across batches).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import torch

from kdistill import config as cfglib
from kdistill.config import ConfigError
from kdistill.errors import DataError
from kdistill.labeler.consistency import LabelFn, default_label_fn
from kdistill.training import set_num_threads
from teacher import cache
from teacher.backends import Generated, HFBackend, VLLMBackend, require_vllm  # noqa: F401 (re-exported)
from teacher.cards import write_rationale_card
from teacher.checked import CheckedGeneration
from teacher.modeling import load_teacher
from teacher.prompts import DEFAULT_MODE, PROMPT_MODES, PROMPT_VERSION, check_mode, prompt_for_study

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
    # labels+report | report | labels (teacher.prompts.PROMPT_MODES); "": the mode the teacher was trained in
    prompt_mode: str = ""
    # What `consistent` (and a retry) asks of a rationale: "strict" = every positive finding of the
    # study and no absent or unlabelled one; "positives" = every positive finding, others allowed
    # (labels read from reports that leave findings to a named cause miss them, and a teacher
    # that knows the cause should not be retried or flagged for naming them); "implied" = strict, but
    # the findings a cause stated in the report brings (findings.yaml syndromes) may be named.
    consistency: Literal["strict", "implied", "positives"] = "strict"
    trust_remote_code: bool = False  # allow a teacher/base folder's own Python code for this run
    force: bool = False  # discard a cache made with another teacher / config

    RENAMED: ClassVar[dict] = {"threads": "num_threads"}

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.num_beams < 1 or self.max_retries < 0:
            raise ValueError("batch_size, max_new_tokens, num_beams >= 1 and max_retries >= 0 are required")
        if self.topk < 0:
            raise ValueError(f"topk must be >= 0, got {self.topk}")
        if self.prompt_mode:
            check_mode(self.prompt_mode)


def _gen_config(cfg: TeacherGenerateConfig, mode: str = DEFAULT_MODE) -> dict[str, Any]:
    # topk, a prompt mode other than the first one and a non-strict consistency rule join only
    # when set, so caches made before they existed keep their hash
    return {**{k: getattr(cfg, k) for k in GEN_KEYS}, **({"topk": cfg.topk} if cfg.topk else {}),
            **({"prompt_mode": mode} if mode != DEFAULT_MODE else {}),
            **({"consistency": cfg.consistency} if cfg.consistency != "strict" else {})}


def gen_config_hash(cfg: TeacherGenerateConfig, mode: str | None = None) -> str:
    """What the rows depend on: the generation settings, the prompt version and mode."""
    mode = mode or cfg.prompt_mode or DEFAULT_MODE
    return cfglib.config_hash({**_gen_config(cfg, mode), "prompt_version": PROMPT_VERSION})


def teacher_mode(cfg: TeacherGenerateConfig, meta: dict[str, Any], teacher_dir) -> str:
    """The prompt mode of this run: the config's, else the one the teacher was trained in. A
    mode the teacher was not trained in is refused (its rationales would follow no prompt it knows)."""
    trained = meta.get("prompt_mode", DEFAULT_MODE)
    mode = cfg.prompt_mode or trained
    if mode != trained:
        raise DataError(Path(teacher_dir) / "teacher.json",
                        f"this teacher was trained on {trained!r} prompts; prompt_mode {mode!r} needs a teacher "
                        f"trained in that mode (teacher_pretrain/teacher_train prompt_mode={mode}); "
                        f"modes: {', '.join(PROMPT_MODES)}")
    return mode


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

    out_dir = Path(out_dir)
    if not studies:
        raise DataError(out_dir, "no studies to generate rationales for")
    if cfg.backend == "vllm":
        require_vllm()
    label_fn = label_fn or default_label_fn()
    set_num_threads(cfg.num_threads)
    state = PartialState(cpu=cfg.cpu)
    device = torch.device("cpu") if cfg.cpu else state.device
    model, tok, meta = load_teacher(teacher_dir, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    tok.padding_side = "left"
    mode = teacher_mode(cfg, meta, teacher_dir)
    context, built, count = _prompts(studies, model, tok, cfg, mode)
    gen_hash = gen_config_hash(cfg, mode)
    cache_meta = {"teacher_id": meta["teacher_id"], "adapter_hash": meta["adapter_hash"], "base": meta["base"],
                  "prompt_version": PROMPT_VERSION, "prompt_mode": mode, "gen_config_hash": gen_hash,
                  "gen_config": _gen_config(cfg, mode), "tokenizer_hash": cache.tokenizer_fingerprint(tok)}
    if state.is_main_process:
        cache.check_metadata(out_dir, cache_meta, cfg.force)
    state.wait_for_everyone()

    done = cache.done_keys(out_dir)
    units = _units(studies, built, done, count, state.num_processes)
    if done:
        log.info("resuming: %d studies already in %s, %d to go", len(done), out_dir, sum(len(v) for _, v in units))
    backend = (VLLMBackend(model, tok, cfg, device, out_dir) if cfg.backend == "vllm"
               else HFBackend(model, tok, cfg, device))
    written, seconds = _generate(units, studies, built, backend, label_fn, cfg, out_dir, state,
                                 {"teacher_id": meta["teacher_id"], "gen_config_hash": gen_hash})
    if isinstance(backend, VLLMBackend):  # the merged copy was only for vllm to load
        shutil.rmtree(out_dir / ".merged", ignore_errors=True)
    log.info("rank %d wrote %d rows (%d generated tokens) in %.1fs", state.process_index, written,
             backend.tokens, seconds)
    state.wait_for_everyone()
    summary: dict[str, Any] = {}
    if state.is_main_process:
        summary = _merge(out_dir, studies, cache_meta, {
            "unique_prompts_this_run": len(units), "resumed_rows": len(done), "processes": state.num_processes,
            "teacher_id": meta["teacher_id"], "gen_config_hash": gen_hash, "prompt_version": PROMPT_VERSION,
            "prompt_mode": mode, "context": context, "generated_tokens": backend.tokens,  # this (main) process
            "rows_per_s": round(written / max(seconds, 1e-9), 2),
            "tokens_per_s": round(backend.tokens / max(seconds, 1e-9), 1)})
    state.wait_for_everyone()
    return summary


def _prompts(studies, model, tok, cfg: TeacherGenerateConfig, mode: str):
    """(context, one BuiltPrompt per study, the token counter); reports cut where too long."""
    context = cfg.context or int(getattr(model.config, "max_position_embeddings", 2048))
    max_prompt = context - cfg.max_new_tokens
    if max_prompt < 16:
        raise ConfigError(f"context {context} leaves {max_prompt} prompt tokens after max_new_tokens "
                          f"{cfg.max_new_tokens}; raise context or lower max_new_tokens")
    count = lambda text: len(tok.encode(text, add_special_tokens=False)) + 1  # noqa: E731 (+ BOS)
    built = [prompt_for_study(s, count, max_prompt, mode) for s in studies]
    n_truncated = sum(b.truncated for b in built)
    if n_truncated:
        log.warning("%d of %d prompts were longer than %d tokens: their reports were cut", n_truncated,
                    len(built), max_prompt)
    return context, built, count


def _units(studies, built, done: set[str], count, num_processes: int) -> list[tuple[str, list[int]]]:
    """(prompt, study indices) of the studies not yet written; identical prompts are one unit.

    Longest first (an OOM shows up at once), ties by hash: the same order on every rank and
    every rerun, so a resumed run forms the same batches as an uninterrupted one. Batches of
    similar output length waste fewer decode steps: a rationale's length follows its number of
    findings, so sort by that first, then by prompt length."""
    groups: dict[str, list[int]] = {}
    findings: dict[str, int] = {}
    for i, (study, prompt) in enumerate(zip(studies, built)):
        if study.study_id not in done:
            groups.setdefault(prompt.text, []).append(i)
            findings[prompt.text] = prompt.n_findings
    units = sorted(groups.items(), key=lambda kv: (-findings[kv[0]], -count(kv[0]),
                                                   hashlib.sha256(kv[0].encode()).hexdigest()))
    return _round_robin_order(units, num_processes)


def _generate(units, studies, built, backend, label_fn, cfg, out_dir: Path, state, row_fields) -> tuple[int, float]:
    """This rank's share of ``units`` decoded, checked and written as shards; (rows, seconds)."""
    from tqdm.auto import tqdm

    writer = cache.ShardWriter(out_dir, state.process_index, with_topk=cfg.topk > 0)
    started = time.time()
    with state.split_between_processes(units) as mine:
        bar = tqdm(total=sum(len(idx) for _, idx in mine), unit="row", desc=f"rationales (rank {state.process_index})",
                   disable=not state.is_main_process)

        def write(rows):
            writer.write(rows)
            bar.update(len(rows))
            bar.set_postfix(tok_s=f"{backend.tokens / max(time.time() - started, 1e-9):.0f}")

        CheckedGeneration(studies, [b.truncated for b in built], backend, label_fn, cfg, row_fields, write).run(mine)
        bar.close()
    return writer.written, time.time() - started


def _merge(out_dir: Path, studies, cache_meta: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """Every rank's shards -> the dataset (with its card); summary.json."""
    _, counts = cache.merge(out_dir, [s.study_id for s in studies], cache_meta)
    summary = {**counts, "consistent_fraction": round(counts["consistent"] / max(counts["rows"], 1), 4), **figures}
    cfglib.save_json(summary, out_dir / "summary.json")
    write_rationale_card(out_dir, cache_meta, summary)
    log.info("rationale cache %s: %d rows, %.1f%% consistent, %d retried, %d truncated", out_dir / "dataset",
             counts["rows"], 100 * summary["consistent_fraction"], counts["retried"], counts["truncated"])
    return summary


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

    data = open_source(ctx.data.name, cfg.data_root, **ctx.data.options) if cfg.data_root else ctx.data
    studies = load_study_list(data, cfg.splits, cfg.on_error, cfg.limit)
    teacher_dir = cfg.teacher or ctx.stage_dir("teacher_train")
    return generate_rationales(studies, teacher_dir, ctx.stage_dir("teacher_generate"), cfg)


def main(argv: list[str] | None = None, prog: str = "kdistill teacher generate") -> int:
    from kdistill.command import add_config_arguments, add_data_arguments, data_source, source_options, stage_config
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
    data = data_source(args) or (open_source(args.source, cfg.data_root, **source_options(args)) if cfg.data_root else None)
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
