"""``kdistill teacher pretrain``: the offline default teacher base.

Trains a byte-level BPE tokenizer on the corpus (saved in transformers format), builds a small
Llama from a JSON config (``teacher/configs/``) and pretrains it on the corpus: prompt ->
rationale pairs, and textbook docs at ``textbook_fraction`` of the sequences. Mixing the pairs
in matters: without them the LoRA-adapted teacher named the right findings far less often on
the phantom. The loop shares the knobs of every training loop (``kdistill.training``):
``max_steps``, ``save_every``, ``num_threads``, ``mixed_precision``, ``resume``.

Output folder (the ``teacher_pretrain`` stage: ``teacher/base/``): ``config.json``,
``model.safetensors``, tokenizer files, ``pretrain.json`` (what was trained, losses, speed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from kdistill import config as cfglib
from kdistill.errors import DataError
from kdistill.outputs import claim_folder, pop_overwrite
from kdistill.labeler.consistency import default_label_fn
from kdistill.training import Checkpoints, cosine_schedule, set_num_threads
from teacher import corpus as corpuslib
from teacher import lm_data
from teacher.modeling import (SPECIAL_TOKENS, build_llama, count_parameters, load_causal_lm, load_tokenizer,
                              resolve_config)
from teacher.prompts import DEFAULT_MODE, check_mode

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TeacherPretrainConfig:
    corpus: str | None = None  # default: <data root>/corpus/corpus.jsonl
    reports: bool = True  # train-split reports of the data root as the pairs' reports
    model_config: str = "llama_3m"  # name in teacher/configs/ or a JSON path
    # Continued (domain-adaptive) pretraining: start from this model folder, its weights and its
    # tokenizer, instead of a new tokenizer and a model built from model_config.
    init: str | None = None
    trust_remote_code: bool = False  # allow init's own Python code for this run
    vocab_size: int = 2000  # upper bound; a templated corpus yields fewer merges
    max_length: int = 384
    max_steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    pair_copies: int = 1  # times each prompt -> rationale pair is mixed in
    # Share of the training sequences that are textbook docs (plain text, loss on every token),
    # the rest being prompt -> rationale pairs. The textbook docs are where the corpus states
    # what a finding looks like and what causes it; at a fixed step budget they take steps from
    # the pairs, so raise max_steps with it (teacher.probe measures what was learned).
    textbook_fraction: float = 0.0
    prompt_mode: str = DEFAULT_MODE  # of the pairs: labels+report | report | labels (teacher.prompts)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16: autocast (also on CPUs with AVX512-BF16)
    cpu: bool = False  # force CPU even when a GPU is there
    filter_inconsistent: bool = True  # drop rationale docs the labeler reads against their findings
    eval_fraction: float = 0.05
    save_every: int = 0  # resumable state every N steps in <out>/checkpoints (0: never)
    resume: bool = True  # continue from the newest state in <out>/checkpoints made by this config
    seed: int = 0
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    log_every: int = 50

    RENAMED: ClassVar[dict] = {"steps": "max_steps", "threads": "num_threads",
                               "textbook": ("textbook_fraction", {False: 0.0, True: 0.25})}

    def validate(self) -> None:
        if self.max_steps < 0 or self.batch_size < 1 or self.max_length < 16:
            raise ValueError("max_steps >= 0, batch_size >= 1 and max_length >= 16 are required")
        if not 0.0 <= self.textbook_fraction < 1.0:
            raise ValueError(f"textbook_fraction must be in [0, 1), got {self.textbook_fraction}")
        check_mode(self.prompt_mode)

    def training_hash(self, corpus_path: str | Path) -> str:
        """What a resumable state must match (not logging, saving or the thread count)."""
        knobs = {k: v for k, v in cfglib.to_dict(self).items()
                 if k not in ("resume", "save_every", "log_every", "num_threads")}
        return cfglib.config_hash({"config": knobs, "corpus": str(corpus_path)})


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path | None = None):
    """Byte-level BPE (as GPT-2 / Llama-3) wrapped as a transformers fast tokenizer with
    bos/eos/pad/unk set; saved to ``out_dir`` so ``AutoTokenizer.from_pretrained`` loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIAL_TOKENS)
    tok.padding_side = "left"  # generation pads on the left; training pads itself
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


MARKERS = ("pretrain.json", "checkpoints/step_*/state.json", "corpus_check.json")  # finished, resumable, or begun


def pretrain(cfg: TeacherPretrainConfig, corpus_path: str | Path, out_dir: str | Path, label_fn=None,
             data=None, overwrite: bool = False) -> dict[str, Any]:
    """Tokenizer + small Llama pretrained on the corpus into ``out_dir``; returns the figures.
    ``label_fn`` (default: the project's labeler) checks rationale docs when filtering; ``data``
    (a ``kdistill.data.sources.DataSource``) gives the train-split reports for the prompts.
    With ``save_every`` a killed run resumes from its newest state to the same weights. A
    non-empty ``out_dir`` that is not a base written here is refused unless ``overwrite``."""
    out_dir = Path(out_dir)
    claim_folder(out_dir, "teacher base folder", MARKERS, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    checkpoints = Checkpoints(out_dir, cfg.training_hash(corpus_path), keep=1)
    found = checkpoints.latest() if cfg.resume else None
    run = _setup(cfg, corpus_path, out_dir, label_fn, data, reuse_tokenizer=found is not None)
    step = 0
    if found is not None:
        run.accelerator.load_state(str(found[0]))
        step = found[1]["step"]
        log.info("resumed pretraining from %s at step %d", found[0], step)
    figures = _fit(cfg, run, checkpoints, step)
    model = run.accelerator.unwrap_model(run.model)
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    run.tok.save_pretrained(str(out_dir))
    result = {
        "params": count_parameters(model), "vocab_size": len(run.tok), "docs": run.n_text, "pairs": run.n_pairs,
        **run.check, "steps": cfg.max_steps, "resumed_from_step": step, **figures,
        **lm_data.evaluate_loss(model, run.eval_rows, cfg.batch_size, run.tok.pad_token_id, run.accelerator.device),
    }
    cfglib.save_json({"config": cfglib.to_dict(cfg), "corpus": str(corpus_path), "result": result},
                     out_dir / "pretrain.json")
    checkpoints.clear()  # finished: nothing to resume
    log.info("pretrained base saved to %s: %s", out_dir, json.dumps(result))
    return result


@dataclasses.dataclass
class _Run:
    accelerator: Any
    tok: Any
    model: Any
    optimizer: Any
    scheduler: Any
    rows: list
    eval_rows: list
    n_text: int
    n_pairs: int
    check: dict


def _setup(cfg: TeacherPretrainConfig, corpus_path, out_dir: Path, label_fn, data, reuse_tokenizer: bool) -> _Run:
    """The corpus read and checked, the tokenizer trained (or, resuming, the one saved), the
    model built, the examples encoded, the optimizer and schedule prepared."""
    from kdistill.training import new_accelerator

    accelerator = new_accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision)
    all_docs = corpuslib.read_corpus(corpus_path)
    docs, check = all_docs, {}
    if cfg.filter_inconsistent:
        check_file = out_dir / "corpus_check.json"
        docs, check = corpuslib.drop_inconsistent(all_docs, label_fn or default_label_fn(), corpus_path,
                                                  [check_file], write_to=check_file)
        log.info("corpus check: %d of %d rationale docs dropped (the labeler reads them against their findings)",
                 check["dropped_inconsistent"], check["rationale_docs"])
    train_docs, eval_docs = corpuslib.split_holdout(docs, cfg.eval_fraction, cfg.seed)
    # Rationale docs enter as pair targets (conditioned on their prompt), textbook docs as text.
    bank = corpuslib.load_report_bank(data) if cfg.reports else {}
    pairs = corpuslib.pair_examples(train_docs, cfg.seed, copies=cfg.pair_copies, reports=bank, mode=cfg.prompt_mode)
    texts = textbook_share(train_docs, len(pairs), cfg.textbook_fraction, cfg.seed)
    tok, model = _tokenizer_and_model(cfg, all_docs, pairs, out_dir, reuse_tokenizer)
    log.info("pretraining a %.2fM-parameter %s (vocab %d) on %d textbook docs + %d pairs for %d steps%s",
             count_parameters(model) / 1e6, model.config.model_type, len(tok), len(texts), len(pairs), cfg.max_steps,
             f", continued from {cfg.init}" if cfg.init else "")
    rows = lm_data.encode(texts + pairs, tok, cfg.max_length)
    held_text = corpuslib.text_examples(eval_docs, kinds=("textbook",)) if cfg.textbook_fraction else []
    eval_rows = lm_data.encode(held_text + corpuslib.pair_examples(eval_docs, cfg.seed + 1, reports=bank,
                                                                   mode=cfg.prompt_mode), tok, cfg.max_length)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, cfg.warmup_steps, cfg.max_steps, floor=0.1, warmup_from_zero=False)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    return _Run(accelerator, tok, model, opt, sched, rows, eval_rows, len(texts), len(pairs), check)


def _tokenizer_and_model(cfg: TeacherPretrainConfig, docs, pairs, out_dir: Path, reuse_tokenizer: bool):
    """A new tokenizer (or, resuming, the one saved) and a model built from ``model_config``;
    or, with ``init``, that folder's tokenizer and weights."""
    if cfg.init:
        tok = load_tokenizer(cfg.init, trust_remote_code=cfg.trust_remote_code)
        tok.save_pretrained(str(out_dir))
        model = load_causal_lm(cfg.init, trust_remote_code=cfg.trust_remote_code)
        if len(tok) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tok))
        return tok, model
    if reuse_tokenizer and (out_dir / "tokenizer.json").is_file():
        tok = load_tokenizer(out_dir)
    else:
        tok = train_tokenizer([d["text"] for d in docs] + [p.prompt for p in pairs], cfg.vocab_size, out_dir)
    model = build_llama(resolve_config(cfg.model_config), len(tok), tok)
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, cfg.max_length)
    return tok, model


def textbook_share(docs: list[dict[str, Any]], n_pairs: int, fraction: float, seed: int) -> list:
    """Textbook docs as plain-text examples making up ``fraction`` of the examples beside
    ``n_pairs`` pairs: every doc once before any repeats, in a seeded order."""
    if fraction <= 0:
        return []
    pool = corpuslib.text_examples(docs, kinds=("textbook",))
    if not pool:
        return []
    want = int(round(fraction / (1.0 - fraction) * n_pairs))
    rng = random.Random(seed + 17)
    out = []
    while len(out) < want:
        order = list(pool)
        rng.shuffle(order)
        out.extend(order[: want - len(out)])
    return out


def _fit(cfg: TeacherPretrainConfig, run: _Run, checkpoints: Checkpoints, step: int) -> dict[str, Any]:
    """Steps ``step + 1 .. max_steps``; the batches follow from (seed, epoch), so a resumed run
    takes up the stream where the state was saved. Returns the loss and speed figures."""
    accelerator, model, tok = run.accelerator, run.model, run.tok
    per_epoch = math.ceil(len(run.rows) / cfg.batch_size)
    epoch, skip = divmod(step, per_epoch)
    stream = lm_data.infinite_batches(run.rows, cfg.batch_size, tok.pad_token_id, cfg.seed, start_epoch=epoch)
    for _ in range(skip):
        next(stream)
    model.train()
    tokens, first_loss, loss_value, started = 0, None, math.nan, time.time()
    while step < cfg.max_steps:
        batch = {k: v.to(accelerator.device) for k, v in next(stream).items()}
        with accelerator.autocast():
            loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += int(batch["attention_mask"].sum())
        loss_value = loss.item()
        first_loss = loss_value if first_loss is None else first_loss
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            log.info("pretrain step %d/%d loss %.3f (%.0f tokens/s)", step, cfg.max_steps, loss_value,
                     tokens / max(time.time() - started, 1e-9))
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            _save_checkpoint(accelerator, checkpoints, step)
    seconds = time.time() - started
    return {"first_loss": None if first_loss is None else round(first_loss, 4),
            "final_loss": round(loss_value, 4) if not math.isnan(loss_value) else None,
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "seconds": round(seconds, 1)}


def _save_checkpoint(accelerator, checkpoints: Checkpoints, step: int) -> None:
    checkpoints.save(accelerator, step, {"step": step})


def default_corpus(data_root: str | Path) -> Path:
    return Path(data_root) / "corpus" / "corpus.jsonl"


def run_stage(cfg: TeacherPretrainConfig, ctx) -> dict[str, Any]:
    corpus = cfg.corpus or default_corpus(ctx.data_root)
    return pretrain(cfg, corpus, ctx.stage_dir("teacher_pretrain"), data=ctx.data)


def main(argv: list[str] | None = None, prog: str = "kdistill teacher pretrain") -> int:
    from kdistill.command import add_config_arguments, add_data_arguments, data_source, stage_config

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="corpus.jsonl (default: DATA_ROOT/corpus/corpus.jsonl)")
    add_data_arguments(parser, required=False, what="corpus/corpus.jsonl and train-split reports for the prompts")
    parser.add_argument("--out", required=True, help="output folder for the base model + tokenizer")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it holds files that are not a teacher base")
    add_config_arguments(parser, "teacher_pretrain", example="max_steps=100")
    args = parser.parse_intermixed_args(argv)
    overwrite = pop_overwrite(args.overrides) or args.overwrite
    cfg = stage_config(TeacherPretrainConfig, args, "teacher_pretrain")
    corpus = args.corpus or cfg.corpus or (default_corpus(args.data_root) if args.data_root else None)
    if corpus is None:
        raise DataError(None, "give --corpus PATH or --data-root ROOT")
    result = pretrain(cfg, corpus, args.out, data=data_source(args), overwrite=overwrite)
    print(json.dumps(result, indent=2))
    return 0
