"""``kdistill teacher train``: LoRA-adapt a causal LM to the biomedical corpus.

The base is any ``AutoModelForCausalLM`` by local path (default: the pretrained base in
``teacher/base/``) or hub id (needs network; bf16 + gradient checkpointing are the settings for
a real 7B-class model on a GPU). It learns from the corpus's rationale paragraphs and from
prompt -> rationale pairs (loss on the rationale tokens only), with a held-out part of the
corpus for eval loss / perplexity.

One readable accelerate loop: the same file runs on a CPU, one GPU or many
(``accelerate launch -m kdistill.cli teacher train ...``). ``save_state`` every
``checkpoint_every`` steps into ``<out>/checkpoints/last``; a rerun resumes from it.

Output folder (the ``teacher_train`` stage: ``teacher/``): ``adapter_model.safetensors`` +
``adapter_config.json`` (peft), tokenizer files, ``teacher.json`` (base, adapter hash, config,
losses).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from kdistill import config as cfglib
from kdistill.errors import DataError
from teacher import corpus as corpuslib
from teacher import lm_data
from teacher.consistency import default_label_fn
from teacher.modeling import adapter_hash, check_model_path, is_local, load_causal_lm, load_tokenizer, lora_targets

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StageConfig:
    base: str | None = None  # local path or hub id; default: the teacher_pretrain stage's output
    corpus: str | None = None  # default: <data root>/corpus/corpus.jsonl
    reports: bool = True  # train-split reports of the data root as the pairs' reports
    dtype: str = "float32"  # "bfloat16" for real models on a GPU
    gradient_checkpointing: bool = False  # True for real models (memory for compute)
    trust_remote_code: bool = False  # only when the user sets it
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None  # None: found from the model family (all linear layers)
    steps: int = 40  # configs/demo.yaml: 200 (~1 epoch of the phantom pairs: 87% -> 89% consistent)
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_steps: int = 20
    max_length: int = 384
    pair_copies: int = 1  # prompt -> rationale pairs per rationale doc
    # Rationale paragraphs also as plain text (no prompt), per doc. Off by default: on the
    # phantom, mixing them in dropped consistent rationales from 38% to 8% (the teacher learns
    # to write rationales regardless of the findings line); the paragraphs are still learned,
    # as the targets of the pairs.
    doc_copies: int = 0
    filter_inconsistent: bool = True  # drop rationale docs the labeler reads against their findings
    eval_fraction: float = 0.05
    eval_every: int = 0  # 0: eval at start and end only
    checkpoint_every: int = 100  # 0: never
    resume: bool = True  # resume from <out>/checkpoints/last when present
    seed: int = 0
    threads: int = 0
    cpu: bool = False  # force CPU even when a GPU is there
    log_every: int = 50

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if self.lora_r < 1:
            raise ValueError("lora_r must be >= 1")


def train(cfg: StageConfig, base: str | Path, corpus_path: str | Path, out_dir: str | Path,
          label_fn=None, data_root: str | Path | None = None) -> dict[str, Any]:
    """LoRA adapter + tokenizer + teacher.json into ``out_dir``; returns the figures (main process).
    ``label_fn`` (default: the project's labeler) checks rationale docs when filtering."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model

    out_dir = Path(out_dir)
    base = str(base)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_model_path(base)
    docs = corpuslib.read_corpus(corpus_path)
    if not any(d.get("kind") == "rationale" for d in docs):
        raise DataError(corpus_path, "corpus has no rationale docs to adapt the teacher on")
    check: dict[str, int] = {}
    if cfg.filter_inconsistent:  # reuses the pretrain stage's verdicts when it saw this corpus
        reuse = [Path(base) / "corpus_check.json"] if is_local(base) else []
        docs, check = corpuslib.drop_inconsistent(docs, label_fn or default_label_fn(), corpus_path,
                                                  reuse + [out_dir / "corpus_check.json"])

    # --- 1. accelerator, tokenizer, base model, LoRA -------------------------------------
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.dtype, "no") if not cfg.cpu else "no"
    accelerator = Accelerator(
        cpu=cfg.cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
    )
    set_seed(cfg.seed)
    tok = load_tokenizer(base, trust_remote_code=cfg.trust_remote_code)
    model = load_causal_lm(base, dtype="float32" if precision != "no" else cfg.dtype,
                           trust_remote_code=cfg.trust_remote_code)
    if len(tok) > model.get_input_embeddings().num_embeddings:  # a pad token was added
        model.resize_token_embeddings(len(tok))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = cfg.target_modules or lora_targets(model)
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    ))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d on %s: %d trainable parameters", cfg.lora_r, targets, trainable)

    # --- 2. data: rationale paragraphs + prompt -> rationale pairs, held-out part for eval --
    train_docs, eval_docs = corpuslib.split_holdout(docs, cfg.eval_fraction, cfg.seed)
    bank = corpuslib.load_report_bank(data_root) if cfg.reports else {}
    examples = (corpuslib.text_examples(train_docs, kinds=("rationale",)) * cfg.doc_copies
                + corpuslib.pair_examples(train_docs, cfg.seed, copies=cfg.pair_copies, reports=bank))
    eval_examples = (corpuslib.text_examples(eval_docs, kinds=("rationale",))
                     + corpuslib.pair_examples(eval_docs, cfg.seed + 1, reports=bank))
    rows = lm_data.encode(examples, tok, cfg.max_length)
    eval_rows = lm_data.encode(eval_examples, tok, cfg.max_length)
    # Batches of similar lengths (padding would otherwise cost 2-3x the compute), reshuffled
    # per epoch from (seed, epoch) so a resumed run sees the same batches.
    sampler = lm_data.GroupedBatchSampler([len(ids) for ids, _ in rows], cfg.batch_size, cfg.seed)
    # its own generator: starting an iterator must not draw from the global RNG, or a resumed
    # run's dropout masks would differ from an uninterrupted run's
    loader = torch.utils.data.DataLoader(rows, batch_sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed),
                                         collate_fn=lambda b: lm_data.collate(b, tok.pad_token_id))

    # --- 3. optimiser, schedule, prepare ------------------------------------------------
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lm_data.warmup_cosine(cfg.warmup_steps, cfg.steps))
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)

    # --- 4. resume ---------------------------------------------------------------------
    ckpt = out_dir / "checkpoints" / "last"
    step = resumed_from = 0
    if cfg.resume and (ckpt / "step.json").is_file():
        accelerator.load_state(str(ckpt))
        step = resumed_from = json.loads((ckpt / "step.json").read_text())["step"]
        log.info("resumed from %s at step %d", ckpt, step)

    # --- 5. the loop -------------------------------------------------------------------
    first_eval = lm_data.evaluate_loss(model, eval_rows, cfg.batch_size, tok.pad_token_id, accelerator.device)
    if first_eval:
        log.info("eval before training: loss %.3f perplexity %.2f", first_eval["eval_loss"], first_eval["eval_perplexity"])
    losses: list[float] = []
    history = []
    started, tokens = time.time(), 0
    model.train()
    per_epoch = len(loader)
    while step < cfg.steps:
        epoch, skip = divmod(step, per_epoch)
        sampler.epoch = epoch
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            losses.append(loss.item())
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                log.info("train step %d/%d loss %.3f (%.0f tokens/s)", step, cfg.steps,
                         sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]),
                         tokens / max(time.time() - started, 1e-9))
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                history.append({"step": step, **lm_data.evaluate_loss(
                    model, eval_rows, cfg.batch_size, tok.pad_token_id, accelerator.device)})
                log.info("eval at step %d: %s", step, history[-1])
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_checkpoint(accelerator, ckpt, step)
            if step >= cfg.steps:
                break

    # --- 6. eval, save adapter + tokenizer + teacher.json ---------------------------------
    final_eval = lm_data.evaluate_loss(model, eval_rows, cfg.batch_size, tok.pad_token_id, accelerator.device)
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(str(out_dir), safe_serialization=True)
        tok.save_pretrained(str(out_dir))
        digest = adapter_hash(out_dir)
        result = {
            "steps": step,
            "resumed_from_step": resumed_from,
            "trainable_params": trainable,
            **check,
            # means over the first and last tenth of the steps (one batch is too noisy)
            "first_train_loss": _mean(losses[: max(len(losses) // 10, 1)]),
            "final_train_loss": _mean(losses[-max(len(losses) // 10, 1):]),
            "eval_before": first_eval,
            "eval_history": history,
            **final_eval,
            "tokens_per_s": round(tokens / max(time.time() - started, 1e-9), 1),
        }
        meta = {
            "base": str(Path(base).resolve()) if is_local(base) else base,
            "base_relative": _relative(base, out_dir),
            "adapter_hash": digest,
            "teacher_id": teacher_id(base, digest),
            "dtype": cfg.dtype,
            "trust_remote_code": cfg.trust_remote_code,
            "lora_targets": targets,
            "config": cfglib.to_dict(cfg),
            "corpus": str(corpus_path),
            "result": result,
        }
        cfglib.save_json(meta, out_dir / "teacher.json")
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # finished: nothing to resume
        log.info("teacher saved to %s (adapter %s): %s", out_dir, digest[:12], json.dumps(final_eval))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def teacher_id(base: str, digest: str) -> str:
    """Base model + adapter hash: what the rationale cache records as its teacher."""
    name = Path(base).name if is_local(base) else base
    return f"{name}+lora-{digest[:16]}"


def _save_checkpoint(accelerator, ckpt: Path, step: int) -> None:
    # save_state into a temp folder, then swap it in: a kill mid-save leaves the old one intact
    tmp = ckpt.with_name("last.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cfglib.write_text_atomic(tmp / "step.json", json.dumps({"step": step}))
        old = ckpt.with_name("last.old")
        shutil.rmtree(old, ignore_errors=True)
        if ckpt.exists():
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _relative(base: str, out_dir: Path) -> str | None:
    """Base path relative to the teacher folder, so a moved run folder still loads."""
    if not is_local(base):
        return None
    try:
        return os.path.relpath(Path(base).resolve(), out_dir.resolve())
    except ValueError:
        return None


def run_stage(cfg: StageConfig, ctx) -> dict[str, Any]:
    from teacher.pretrain import default_corpus

    base = cfg.base or ctx.stage_dir("teacher_pretrain")
    corpus = cfg.corpus or default_corpus(ctx.data_root)
    return train(cfg, base, corpus, ctx.stage_dir("teacher_train"), data_root=ctx.data_root)


def main(argv: list[str] | None = None, prog: str = "kdistill teacher train") -> int:
    from teacher.pretrain import default_corpus

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="base model: local folder or hub id (default: config 'base')")
    parser.add_argument("--corpus", help="corpus.jsonl (or give --data-root)")
    parser.add_argument("--data-root", help="dataset root holding corpus/corpus.jsonl")
    parser.add_argument("--out", required=True, help="teacher folder to write (adapter + tokenizer + teacher.json)")
    parser.add_argument("--config", help="YAML with StageConfig keys")
    parser.add_argument("--section", help="section of --config to read, e.g. teacher_train")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 dtype=bfloat16")
    args = parser.parse_args(argv)
    cfg = cfglib.load(StageConfig, args.config, args.overrides, section=args.section)
    base = args.base or cfg.base
    corpus = args.corpus or cfg.corpus or (default_corpus(args.data_root) if args.data_root else None)
    if base is None:
        raise DataError(None, "give --base (a local model folder or hub id)")
    if corpus is None:
        raise DataError(None, "give --corpus PATH or --data-root ROOT")
    result = train(cfg, base, corpus, args.out, data_root=args.data_root)
    if result:
        print(json.dumps(result, indent=2))
    return 0
