"""``kdistill teacher train``: LoRA-adapt a causal LM to the biomedical corpus.

The base is any ``AutoModelForCausalLM`` by local path (default: the pretrained base in
``teacher/base/``) or hub id (needs network; bf16 + gradient checkpointing are the settings for
a real 7B-class model on a GPU). It learns from the corpus's rationale paragraphs and from
prompt -> rationale pairs (loss on the rationale tokens only), with a held-out part of the
corpus for eval loss / perplexity.

One readable accelerate loop: the same file runs on a CPU, one GPU or many
(``accelerate launch -m kdistill.cli teacher train ...``), with the knobs and resumable states
every training loop shares (``kdistill.training``): a state every ``save_every`` steps in
``<out>/checkpoints/step_N``, from which a rerun of the same config resumes.

Output folder (the ``teacher_train`` stage: ``teacher/``): ``adapter_model.safetensors`` +
``adapter_config.json`` (peft), tokenizer files, ``teacher.json`` (base, adapter hash, config,
losses).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from kdistill import config as cfglib
from kdistill.errors import DataError
from kdistill.io import write_json
from kdistill.outputs import claim_folder, pop_overwrite
from kdistill.training import Checkpoints, cosine_schedule, set_num_threads
from teacher import corpus as corpuslib
from teacher import lm_data
from kdistill.labeler.consistency import default_label_fn
from teacher.cards import write_teacher_card
from teacher.modeling import adapter_hash, check_model_path, is_local, load_causal_lm, load_tokenizer, lora_targets
from teacher.prompts import DEFAULT_MODE, PROMPT_VERSION, check_mode

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TeacherTrainConfig:
    base: str | None = None  # local path or hub id; default: the teacher_pretrain stage's output
    corpus: str | None = None  # default: <data root>/corpus/corpus.jsonl
    reports: bool = True  # train-split reports of the data root as the pairs' reports
    # "bf16"/"fp16": autocast over float32 weights (real models on a GPU; bf16 also on a CPU); "no": float32.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False  # True for real models (memory for compute)
    trust_remote_code: bool = False  # allow a base folder's own Python code for this run (only when the user sets it)
    # labels+report | report | labels (teacher.prompts.PROMPT_MODES); "": the base's pretraining mode
    # (pretrain.json), labels+report for other bases
    prompt_mode: str = ""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None  # None: found from the model family (all linear layers)
    max_steps: int = 40  # configs/demo.yaml: 200 (~1 epoch of the phantom pairs: 87% -> 89% consistent)
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
    save_every: int = 100  # resumable state every N steps (0: never)
    resume: bool = True  # continue from the newest state in <out>/checkpoints made by this config
    seed: int = 0
    num_threads: int = 0
    cpu: bool = False  # force CPU even when a GPU is there
    log_every: int = 50

    RENAMED: ClassVar[dict] = {
        "steps": "max_steps", "checkpoint_every": "save_every", "threads": "num_threads",
        "dtype": ("mixed_precision", {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}),
    }

    def validate(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be >= 1")
        if self.lora_r < 1:
            raise ValueError("lora_r must be >= 1")
        if self.prompt_mode:
            check_mode(self.prompt_mode)

    def training_hash(self, base: str, corpus_path: str | Path) -> str:
        """What a resumable state must match (not logging, saving or the thread count)."""
        knobs = {k: v for k, v in cfglib.to_dict(self).items()
                 if k not in ("resume", "save_every", "log_every", "num_threads", "eval_every")}
        return cfglib.config_hash({"config": knobs, "base": str(base), "corpus": str(corpus_path)})


@dataclasses.dataclass
class _Setup:
    accelerator: Any
    tok: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: Any
    eval_rows: list
    targets: Any
    trainable: int
    mode: str


MARKERS = ("teacher.json", "checkpoints/step_*/state.json", "corpus_check.json")  # finished, resumable, or begun


def train(cfg: TeacherTrainConfig, base: str | Path, corpus_path: str | Path, out_dir: str | Path,
          label_fn=None, data=None, overwrite: bool = False) -> dict[str, Any]:
    """LoRA adapter + tokenizer + teacher.json into ``out_dir``; returns the figures (main process).
    ``label_fn`` (default: the project's labeler) checks rationale docs when filtering; ``data``
    (a ``kdistill.data.sources.DataSource``) gives the train-split reports for the prompts. A
    non-empty ``out_dir`` that is not a teacher written here is refused unless ``overwrite``."""
    out_dir = Path(out_dir)
    # The run layout nests the base inside the teacher folder (teacher/base): not a foreign file.
    nested = [Path(base).name] if Path(base).resolve().parent == out_dir.resolve() else []
    claim_folder(out_dir, "teacher folder", MARKERS, overwrite, ignore=nested)
    base = str(base)
    set_num_threads(cfg.num_threads)
    check_model_path(base)
    docs = corpuslib.read_corpus(corpus_path)
    if not any(d.get("kind") == "rationale" for d in docs):
        raise DataError(corpus_path, "corpus has no rationale docs to adapt the teacher on")
    check: dict[str, int] = {}
    if cfg.filter_inconsistent:  # reuses the pretrain stage's verdicts when it saw this corpus
        reuse = [Path(base) / "corpus_check.json"] if is_local(base) else []
        docs, check = corpuslib.drop_inconsistent(docs, label_fn or default_label_fn(), corpus_path,
                                                  reuse + [out_dir / "corpus_check.json"])
    run = _setup(cfg, base, docs, data)
    checkpoints = Checkpoints(out_dir, cfg.training_hash(base, corpus_path), keep=1)
    step = resumed_from = 0
    found = checkpoints.latest() if cfg.resume else None
    if found is not None:
        run.accelerator.load_state(str(found[0]))
        step = resumed_from = found[1]["step"]
        log.info("resumed from %s at step %d", found[0], step)
    first_eval = lm_data.evaluate_loss(run.model, run.eval_rows, cfg.batch_size, run.tok.pad_token_id,
                                       run.accelerator.device)
    if first_eval:
        log.info("eval before training: loss %.3f perplexity %.2f", first_eval["eval_loss"], first_eval["eval_perplexity"])
    started = time.time()
    losses, history, tokens = _fit(cfg, run, checkpoints, step)
    figures = {"resumed_from_step": resumed_from, "trainable_params": run.trainable, **check,
               "eval_before": first_eval, "eval_history": history,
               "tokens_per_s": round(tokens / max(time.time() - started, 1e-9), 1)}
    return _finish(cfg, run, base, corpus_path, out_dir, checkpoints, losses, figures)


def _setup(cfg: TeacherTrainConfig, base: str, docs: list[dict[str, Any]], data) -> _Setup:
    """Accelerator, tokenizer, base model with LoRA, the examples and their loader, optimizer
    and schedule, all prepared."""
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model

    # bf16 autocast also runs on CPUs (AVX512-BF16: ~1.4x the float32 step on this machine); fp16 does not
    from kdistill.training import new_accelerator

    accelerator = new_accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    set_seed(cfg.seed)
    tok = load_tokenizer(base, trust_remote_code=cfg.trust_remote_code)
    # float32 weights; with mixed precision accelerate autocasts the compute
    model = load_causal_lm(base, dtype="float32", trust_remote_code=cfg.trust_remote_code)
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

    # rationale paragraphs + prompt -> rationale pairs, a held-out part for eval
    mode = train_mode(cfg, base)
    train_docs, eval_docs = corpuslib.split_holdout(docs, cfg.eval_fraction, cfg.seed)
    bank = corpuslib.load_report_bank(data) if cfg.reports else {}
    examples = (corpuslib.text_examples(train_docs, kinds=("rationale",)) * cfg.doc_copies
                + corpuslib.pair_examples(train_docs, cfg.seed, copies=cfg.pair_copies, reports=bank, mode=mode))
    eval_examples = (corpuslib.text_examples(eval_docs, kinds=("rationale",))
                     + corpuslib.pair_examples(eval_docs, cfg.seed + 1, reports=bank, mode=mode))
    rows = lm_data.encode(examples, tok, cfg.max_length)
    eval_rows = lm_data.encode(eval_examples, tok, cfg.max_length)
    # Batches of similar lengths (padding would otherwise cost 2-3x the compute), reshuffled
    # per epoch from (seed, epoch) so a resumed run sees the same batches.
    sampler = lm_data.GroupedBatchSampler([len(ids) for ids, _ in rows], cfg.batch_size, cfg.seed)
    # its own generator: starting an iterator must not draw from the global RNG, or a resumed
    # run's dropout masks would differ from an uninterrupted run's
    loader = torch.utils.data.DataLoader(rows, batch_sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed),
                                         collate_fn=lambda b: lm_data.collate(b, tok.pad_token_id))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = cosine_schedule(opt, cfg.warmup_steps, cfg.max_steps, floor=0.1, warmup_from_zero=False)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    return _Setup(accelerator, tok, model, opt, sched, loader, sampler, eval_rows, targets, trainable, mode)


def train_mode(cfg: TeacherTrainConfig, base: str) -> str:
    """The prompt mode: the config's, else the one the base was pretrained in (its pretrain.json)."""
    if cfg.prompt_mode:
        return cfg.prompt_mode
    path = Path(base) / "pretrain.json"
    if is_local(base) and path.is_file():
        try:
            return json.loads(path.read_text()).get("config", {}).get("prompt_mode") or DEFAULT_MODE
        except json.JSONDecodeError as err:
            raise DataError(path, f"not valid JSON: {err}") from None
    return DEFAULT_MODE


def _fit(cfg: TeacherTrainConfig, run: _Setup, checkpoints: Checkpoints, step: int):
    """The loop from ``step`` to ``max_steps``; returns (losses, eval history, tokens seen)."""
    accelerator, model = run.accelerator, run.model
    losses: list[float] = []
    history = []
    started, tokens = time.time(), 0
    model.train()
    per_epoch = len(run.loader)
    while step < cfg.max_steps:
        epoch, skip = divmod(step, per_epoch)
        run.sampler.epoch = epoch
        batches = accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            losses.append(loss.item())
            step += 1
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                log.info("train step %d/%d loss %.3f (%.0f tokens/s)", step, cfg.max_steps,
                         sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]),
                         tokens / max(time.time() - started, 1e-9))
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                history.append({"step": step, **lm_data.evaluate_loss(
                    model, run.eval_rows, cfg.batch_size, run.tok.pad_token_id, accelerator.device)})
                log.info("eval at step %d: %s", step, history[-1])
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                _save_checkpoint(accelerator, checkpoints, step)
            if step >= cfg.max_steps:
                break
    return losses, history, tokens


def _finish(cfg: TeacherTrainConfig, run: _Setup, base: str, corpus_path, out_dir: Path, checkpoints: Checkpoints,
            losses: list[float], figures: dict[str, Any]) -> dict[str, Any]:
    """Final eval; the adapter, tokenizer and teacher.json saved; the finished run's states removed."""
    accelerator = run.accelerator
    final_eval = lm_data.evaluate_loss(run.model, run.eval_rows, cfg.batch_size, run.tok.pad_token_id, accelerator.device)
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(run.model).save_pretrained(str(out_dir), safe_serialization=True)
        _absolute_base_in_adapter_config(out_dir, base)
        run.tok.save_pretrained(str(out_dir))
        digest = adapter_hash(out_dir)
        result = {
            "steps": cfg.max_steps,
            **figures,
            # means over the first and last tenth of the steps (one batch is too noisy)
            "first_train_loss": _mean(losses[: max(len(losses) // 10, 1)]),
            "final_train_loss": _mean(losses[-max(len(losses) // 10, 1):]),
            **final_eval,
        }
        meta = {
            "base": str(Path(base).resolve()) if is_local(base) else base,
            "base_relative": _relative(base, out_dir),
            "adapter_hash": digest,
            "teacher_id": teacher_id(base, digest),
            "dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(cfg.mixed_precision, "float32"),
            "trust_remote_code": cfg.trust_remote_code,
            "prompt_mode": run.mode,
            "prompt_version": PROMPT_VERSION,
            "lora_targets": run.targets,
            "config": cfglib.to_dict(cfg),
            "corpus": str(corpus_path),
            "result": result,
        }
        cfglib.save_json(meta, out_dir / "teacher.json")
        write_teacher_card(out_dir, meta, _pretrain_record(base))
        checkpoints.clear()  # finished: nothing to resume
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


def _save_checkpoint(accelerator, checkpoints: Checkpoints, step: int) -> None:
    checkpoints.save(accelerator, step, {"step": step})


def _absolute_base_in_adapter_config(out_dir: Path, base: str) -> None:
    """peft records the base as it was named (a path relative to the cwd of this run); an absolute
    path lets ``AutoPeftModelForCausalLM.from_pretrained(out_dir)`` find it from any cwd."""
    if not is_local(base):
        return
    path = out_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(Path(base).expanduser().resolve())
    write_json(path, config)


def _pretrain_record(base: str) -> dict[str, Any] | None:
    path = Path(base) / "pretrain.json"
    if not (is_local(base) and path.is_file()):
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _relative(base: str, out_dir: Path) -> str | None:
    """Base path relative to the teacher folder, so a moved run folder still loads."""
    if not is_local(base):
        return None
    try:
        return os.path.relpath(Path(base).resolve(), out_dir.resolve())
    except ValueError:
        return None


def run_stage(cfg: TeacherTrainConfig, ctx) -> dict[str, Any]:
    from teacher.pretrain import default_corpus

    base = cfg.base or ctx.stage_dir("teacher_pretrain")
    corpus = cfg.corpus or default_corpus(ctx.data_root)
    return train(cfg, base, corpus, ctx.stage_dir("teacher_train"), data=ctx.data)


def main(argv: list[str] | None = None, prog: str = "kdistill teacher train") -> int:
    from kdistill.command import add_config_arguments, add_data_arguments, data_source, stage_config
    from teacher.pretrain import default_corpus

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="base model: local folder or hub id (default: config 'base')")
    parser.add_argument("--corpus", help="corpus.jsonl (default: DATA_ROOT/corpus/corpus.jsonl)")
    add_data_arguments(parser, required=False, what="its train-split reports fill the prompts")
    parser.add_argument("--out", required=True, help="teacher folder to write (adapter + tokenizer + teacher.json)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it holds files that are not a teacher folder")
    add_config_arguments(parser, "teacher_train", example="max_steps=100 mixed_precision=bf16")
    args = parser.parse_intermixed_args(argv)
    overwrite = pop_overwrite(args.overrides) or args.overwrite
    cfg = stage_config(TeacherTrainConfig, args, "teacher_train")
    base = args.base or cfg.base
    corpus = args.corpus or cfg.corpus or (default_corpus(args.data_root) if args.data_root else None)
    if base is None:
        raise DataError(None, "give --base (a local model folder or hub id)")
    if corpus is None:
        raise DataError(None, "give --corpus PATH or --data-root ROOT")
    result = train(cfg, base, corpus, args.out, data=data_source(args), overwrite=overwrite)
    if result:
        print(json.dumps(result, indent=2))
    return 0
