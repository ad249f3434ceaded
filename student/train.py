"""``kdistill student train``: the student's training loop, with accelerate end to end.

One CPU process, several CPU processes (gloo), one or many GPUs (DDP; FSDP through an accelerate
config) run the same code: ``accelerate launch --config_file accelerate_config.yaml -m kdistill.cli
student train ...``. Mixed precision, gradient accumulation, clipping, AdamW + cosine schedule with
warmup, a sanity pass on two validation batches before the first step, validation every N steps
(micro-AUC, loss), the best weights kept as the checkpoint, early stopping, ``save_state`` every N
steps and ``--resume`` that continues the same schedule (same weights as an uninterrupted run).

Output folder (the checkpoint, DESIGN.md): config.json, model.safetensors, tokenizer files,
thresholds.json, metrics.json; plus train_log.csv, training_config.json, checkpoints/step_N/
(resumable state) and tensorboard logs when tensorboard is installed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kdistill import config as cfglib
from kdistill.config import ConfigError
from kdistill.errors import DataError
from student import checkpoint as ckpt
from student.augment import AugmentConfig, augment
from student.config import StudentConfig
from student.losses import LossWeights, student_loss

log = logging.getLogger("kdistill.student")

STATE_FILE = "train_state.json"
LOG_COLUMNS = ("step", "epoch", "lr", "loss", "cls", "rep", "kd", "emb", "tok", "val_loss", "val_micro_auc",
               "val_macro_auc", "images_per_s")


@dataclasses.dataclass
class StageConfig:
    model: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    loss: LossWeights = dataclasses.field(default_factory=LossWeights)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)  # training images only
    uncertain: Literal["ignore", "ones", "zeros"] = "ignore"
    blank: Literal["zeros", "ignore"] = "zeros"
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    max_steps: int = 300  # optimizer steps
    clip_grad: float = 1.0  # 0: no clipping
    # "auto": what accelerate's launch config / environment says (default: none).
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    eval_every: int = 50
    save_every: int = 100  # accelerate save_state every N steps (0: never)
    keep_checkpoints: int = 2
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    select_metric: Literal["micro_auc", "loss"] = "micro_auc"
    seed: int | None = None  # None: the run's seed
    num_workers: int = 0
    num_threads: int = 0  # CPU threads per process; 0: the cores divided among the processes
    require_rationales: bool = False  # fail when a training study has no rationale (else count, train on)
    consistent_rationales_only: bool = True  # leave out rationales the labeler finds inconsistent
    max_eval_batches: int | None = None
    cpu: bool = False
    tensorboard: bool = True  # used when tensorboard is installed
    log_every: int = 10
    # Inputs; None in a pipeline run means the upstream stages' folders.
    prepared: str | None = None
    rationales: str | None = None
    tokenizer: str | None = None

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.warmup_steps < 0 or self.save_every < 0:
            raise ValueError("warmup_steps and save_every must be >= 0")

    @property
    def needs_rationales(self) -> bool:
        return self.loss.kd > 0 or self.loss.emb > 0 or self.loss.tok > 0


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf: names the step and the batch's studies; the best checkpoint is kept."""


@dataclasses.dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)
    best: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    images: int = 0
    resized: int = 0


# ----------------------------------------------------------------------------- helpers

def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot load the teacher's tokenizer: {err}") from None


def _make_accelerator(cfg: StageConfig, out_dir: Path):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    trackers = "tensorboard" if cfg.tensorboard and importlib.util.find_spec("tensorboard") else None
    # A loss term with weight 0 leaves part of the model out of the graph; DDP must then not wait
    # for its gradients (the search for unused parameters costs a graph traversal, so only then).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not all(cfg.loss.terms().values()))
    precision = None if cfg.mixed_precision == "auto" else cfg.mixed_precision
    acc = Accelerator(cpu=cfg.cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                      log_with=trackers, project_dir=str(out_dir), kwargs_handlers=[ddp])
    if acc.device.type == "cpu":
        # One process would otherwise use torch's default, several would oversubscribe the cores.
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // acc.num_processes))
    return acc


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Norms, biases, embeddings and learned queries are not decayed (as CLIP/CoCa training).
        (no_decay if p.ndim < 2 or "embedding" in name or "queries" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _model_inputs(batch: dict[str, Any], cfg: StageConfig) -> dict[str, Any]:
    inputs = {"images": batch["images"]}
    if cfg.loss.rep:
        inputs["report_ids"] = batch["report_ids"]
    if cfg.needs_rationales:
        inputs["rationale_ids"] = batch["rationale_ids"]
        inputs["rationale_mask"] = batch["rationale_mask"]
        inputs["with_embedding"] = bool(cfg.loss.emb)
    return inputs


def auc_scores(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Micro-AUC over every labelled (finding, study) entry; macro over findings with both classes."""
    from sklearn.metrics import roc_auc_score

    keep = mask > 0
    y, p = targets[keep], probs[keep]
    micro = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else math.nan
    per = []
    for c in range(probs.shape[1]):
        k = mask[:, c] > 0
        yc = targets[k, c]
        if 0 < yc.sum() < yc.size:
            per.append(float(roc_auc_score(yc, probs[k, c])))
    return {"micro_auc": micro, "macro_auc": float(np.mean(per)) if per else math.nan, "auc_findings": len(per)}


def evaluate(accelerator, model, loader, cfg: StageConfig, max_batches: int | None = None) -> dict[str, Any]:
    """Loss and AUCs over the validation loader, gathered from every process."""
    model.eval()
    probs, targets, masks, losses, sizes = [], [], [], [], []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            out = model(**_model_inputs(batch, cfg))
            loss, _ = student_loss(out, batch, cfg.loss)
            p, t, m = accelerator.gather_for_metrics((torch.sigmoid(out["logits"].float()), batch["targets"], batch["target_mask"]))
            probs.append(p.cpu())
            targets.append(t.cpu())
            masks.append(m.cpu())
            losses.append(float(loss) * len(batch["images"]))
            sizes.append(len(batch["images"]))
    model.train()
    totals = accelerator.reduce(torch.tensor([sum(losses), sum(sizes)], dtype=torch.float64, device=accelerator.device), "sum")
    result = {"loss": float(totals[0] / max(totals[1], 1))}
    if probs:
        p, t, m = (torch.cat(x).numpy() for x in (probs, targets, masks))
        result.update(auc_scores(p, t, m))
        result["probs"], result["targets"], result["mask"] = p, t, m
    return result


def _score(metrics: dict[str, Any], select: str) -> float:
    if select == "loss":
        return -metrics["loss"]
    value = metrics.get("micro_auc", math.nan)
    return -metrics["loss"] * 1e-6 if math.isnan(value) else value  # no AUC (one class): fall back on loss


def _checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    found = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def _save_state(accelerator, out_dir: Path, state: TrainState, scheduler, keep: int) -> None:
    target = out_dir / "checkpoints" / f"step_{state.step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        # Train state and schedule as JSON (not pickles); written last, so a folder with it is complete.
        blob = {"state": dataclasses.asdict(state), "scheduler": scheduler.state_dict()}
        cfglib.write_text_atomic(target / STATE_FILE, json.dumps(blob, default=_json_default))
        for old in _checkpoints(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _clear_previous_run(out_dir: Path) -> None:
    """A fresh run in a used folder: drop the old run's states and results (only the files this
    module writes), so old step_N folders are neither kept as newest nor mistaken for resumable."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in (ckpt.WEIGHTS, ckpt.THRESHOLDS, ckpt.METRICS, ckpt.CONFIG, "train_log.csv"):
        (out_dir / name).unlink(missing_ok=True)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return None  # LambdaLR keeps its lambdas as None in state_dict


class _CsvLog:
    """train_log.csv on the main process; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        rows = []
        if resume_step is not None and path.is_file():
            with path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=LOG_COLUMNS).writerow({k: row.get(k, "") for k in LOG_COLUMNS})


def _build_data(cfg: StageConfig, prepared, tokenizer, rationales, tokenizer_dir, rationale_path):
    """(train dataset, validation dataset, model config with the teacher's embedding size,
    rationale coverage, how the cache's tokenizer was verified)."""
    from student.data import StudyDataset, check_rationale_tokenizer, coverage, rationale_index
    from student.text import TokenSpec

    for split in ("train", "validate"):
        if split not in prepared:
            raise DataError(None, f"the prepared cache has no '{split}' split (has {list(prepared)})")
    rat_index, tok_check, model_cfg, inconsistent = None, "not used", dataclasses.replace(cfg.model), 0
    if model_cfg.report_context == "rationale" and not cfg.loss.kd:
        # Nothing would teach the student to write the rationale its reports follow.
        log.info("report_context 'rationale' needs w_kd > 0: reports are written from the image alone")
        model_cfg.report_context = "none"
    if cfg.needs_rationales:
        if rationales is None:
            raise DataError(rationale_path, "w_kd, w_emb or w_tok > 0 needs the teacher's rationale cache")
        tok_check = check_rationale_tokenizer(rationale_path, tokenizer_dir, tokenizer, rationales)
        if cfg.loss.tok:
            if "topk_ids" not in rationales.column_names:
                raise DataError(rationale_path, "w_tok > 0 but the rationale cache has no teacher top-k log-probs; "
                                                "generate it with teacher_generate topk=K (e.g. 16)")
            if model_cfg.rationale_order != "as_written":
                raise ConfigError("w_tok > 0 needs model.rationale_order: as_written (the teacher's top-k "
                                  f"follow its rationale token by token), not {model_cfg.rationale_order!r}")
        rat_index, inconsistent = rationale_index(rationales, cfg.consistent_rationales_only, with_topk=cfg.loss.tok > 0)
    spec = TokenSpec(tokenizer, model_cfg.report_prefix, model_cfg.rationale_prefix)
    order = (model_cfg.report_order, model_cfg.rationale_order, model_cfg.rationale_marker)
    train_ds = StudyDataset(prepared["train"], spec, rat_index, cfg.uncertain, cfg.blank, "train", *order)
    val_ds = StudyDataset(prepared["validate"], spec, rat_index, cfg.uncertain, cfg.blank, "validate", *order)
    cover = coverage(train_ds, inconsistent) if rat_index is not None else None
    if cover and cover["missing_rationale"]:
        msg = (f"{cover['missing_rationale']} of {cover['studies']} training studies have no rationale "
               f"(e.g. {', '.join(cover['missing_examples'])})")
        if cfg.require_rationales:
            raise DataError(rationale_path, msg + "; require_rationales is set")
        log.warning("%s: they train without the distillation terms", msg)
    if cfg.loss.emb:
        if train_ds.teacher_embedding is None:
            raise DataError(rationale_path, "w_emb > 0 but the rationale cache has no embeddings")
        model_cfg.teacher_embed_dim = int(train_ds.teacher_embedding.shape[1])
    return train_ds, val_ds, model_cfg, cover, tok_check


# ----------------------------------------------------------------------------- training

def train(
    cfg: StageConfig,
    out_dir: str | Path,
    prepared,
    tokenizer,
    rationales=None,
    *,
    resume: bool = False,
    tokenizer_dir: str | Path | None = None,
    rationale_path: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a student and write its checkpoint folder to ``out_dir``; returns metrics.json's content.

    ``prepared``: DatasetDict with train/validate splits (prepared-cache columns); ``rationales``:
    the teacher's rationale Dataset (needed when w_kd, w_emb or w_tok > 0).
    """
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from student.data import Collate, EpochSampler
    from student.model import create_student

    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed if cfg.seed is not None else seed
    accelerator = _make_accelerator(cfg, out_dir)
    set_seed(seed)

    # --- data
    data = _build_data(cfg, prepared, tokenizer, rationales, tokenizer_dir, rationale_path)
    train_ds, val_ds, model_cfg, cover, tok_check = data
    if len(train_ds) < cfg.batch_size * accelerator.num_processes:
        raise DataError(None, f"{len(train_ds)} training studies: fewer than one batch "
                              f"({cfg.batch_size} x {accelerator.num_processes} processes)")

    model = create_student(model_cfg, tokenizer)
    wrong_size = {name: ds.count_wrong_size(model.image_size) for name, ds in (("train", train_ds), ("validate", val_ds))}
    if any(wrong_size.values()):
        log.warning("images not %dx%d are resized on the fly: %s", *model.image_size, wrong_size)
    collate = Collate(model.tokens, model.image_size, model_cfg.max_text_len, cfg.needs_rationales)
    sampler = EpochSampler(len(train_ds), seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=cfg.num_workers, drop_last=True)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate, num_workers=cfg.num_workers)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    # Scheduled in optimizer steps and stepped by us (not prepared: accelerate would step it once
    # per process), so the schedule is the same for any number of processes.
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)
    model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
    unwrapped = accelerator.unwrap_model(model)

    # --- resume
    state = TrainState()
    resumed_from = None
    if resume:
        found = _checkpoints(out_dir)
        if not found:
            log.warning("--resume: no checkpoint in %s; starting from step 0", out_dir / "checkpoints")
        else:
            resumed_from = found[-1]
            accelerator.load_state(str(resumed_from))
            blob = json.loads((resumed_from / STATE_FILE).read_text())
            state = TrainState(**blob["state"])
            scheduler.load_state_dict(blob["scheduler"])
            log.info("resumed from %s (step %d)", resumed_from, state.step)

    if resumed_from is None and accelerator.is_main_process:
        _clear_previous_run(out_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cfglib.save_json({**cfglib.to_dict(cfg), "model": cfglib.to_dict(model_cfg), "seed": seed},
                         out_dir / "training_config.json")
        ckpt.save_tokenizer(tokenizer, out_dir)
    if accelerator.trackers:
        accelerator.init_trackers("student", config={"lr": cfg.lr, "batch_size": cfg.batch_size, "seed": seed,
                                                     **{f"w_{k}": v for k, v in cfg.loss.terms().items()}})
    csv_log = _CsvLog(out_dir / "train_log.csv", accelerator.is_main_process, state.step if resumed_from else None)

    # --- sanity pass: two validation batches through the model and the loss before any step
    sanity = evaluate(accelerator, model, val_dl, cfg, max_batches=2)
    if not math.isfinite(sanity["loss"]):
        raise NonFiniteLoss(f"the sanity pass on two validation batches gave loss {sanity['loss']}")
    log.info("sanity pass on 2 validation batches: loss %.4f", sanity["loss"])

    # --- loop
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="student")
    running: dict[str, torch.Tensor] = {}
    n_running, t_window, img_window = 0, time.time(), 0
    last_val: dict[str, Any] = {}
    best_val: dict[str, Any] | None = None
    stop = state.step >= cfg.max_steps
    model.train()
    try:
        while not stop:
            loader = accelerator.skip_first_batches(train_dl, state.batch_in_epoch) if state.batch_in_epoch else train_dl
            # accelerate's loader sets its sampler's epoch from its own pass counter on every __iter__;
            # ours (restored on resume) must win, or a resumed run would replay epoch 0's order.
            loader.set_epoch(state.epoch)
            sampler.set_epoch(state.epoch)
            for batch in loader:
                if cfg.augment.enabled:
                    # seeded by position in the schedule, so a resumed run draws the same jitter
                    g = torch.Generator().manual_seed(((seed * 100003 + state.epoch) * 10007 + state.batch_in_epoch) * 64
                                                      + accelerator.process_index)
                    batch["images"] = augment(batch["images"], cfg.augment, g)
                with accelerator.accumulate(model):
                    out = model(**_model_inputs(batch, cfg))
                    loss, terms = student_loss(out, batch, cfg.loss)
                    _check_finite(accelerator, loss, batch, train_ds, state, out_dir)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.clip_grad > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batch_in_epoch += 1
                n_img = len(batch["images"]) * accelerator.num_processes
                state.images += n_img
                img_window += n_img
                state.resized += int(batch["resized"])
                for k, v in {"loss": loss, **terms}.items():  # tensors: no device sync per step
                    running[k] = running.get(k, 0.0) + v.detach().float()
                n_running += 1
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state.step += 1
                bar.update(1)
                row: dict[str, Any] = {}
                if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                    avg = accelerator.reduce(torch.stack([running[k] / n_running for k in running]), "mean")
                    row = {k: round(float(v), 5) for k, v in zip(running, avg)}
                    row["images_per_s"] = round(img_window / max(time.time() - t_window, 1e-9), 2)
                    running, n_running, t_window, img_window = {}, 0, time.time(), 0
                if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
                    t_eval = time.time()
                    last_val = evaluate(accelerator, model, val_dl, cfg, cfg.max_eval_batches)
                    t_window += time.time() - t_eval  # images/s counts training time only
                    row.update(val_loss=round(last_val["loss"], 5), val_micro_auc=last_val.get("micro_auc"),
                               val_macro_auc=last_val.get("macro_auc"))
                    score = _score(last_val, cfg.select_metric)
                    if state.best is None or score > state.best:
                        state.best, state.best_step, state.bad_evals = score, state.step, 0
                        best_val = last_val
                        # get_state_dict gathers the full weights under FSDP/DeepSpeed: every rank calls it
                        weights = accelerator.get_state_dict(model)
                        if accelerator.is_main_process:
                            ckpt.save_weights(model_cfg, weights, out_dir)
                    else:
                        state.bad_evals += 1
                        if cfg.patience and state.bad_evals >= cfg.patience:
                            log.info("early stop at step %d: no improvement in %d evaluations", state.step, cfg.patience)
                            stop = True
                if row:
                    row.update(step=state.step, epoch=state.epoch, lr=scheduler.get_last_lr()[0])
                    csv_log.write(row)
                    accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}, step=state.step)
                    bar.set_postfix({k: row[k] for k in ("loss", "val_micro_auc") if row.get(k) is not None})
                if cfg.save_every and state.step % cfg.save_every == 0:
                    _save_state(accelerator, out_dir, state, scheduler, cfg.keep_checkpoints)
                if state.step >= cfg.max_steps:
                    stop = True
                if stop:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    finally:
        bar.close()
    accelerator.wait_for_everyone()

    # --- finish: thresholds and metrics from the best weights' validation pass (after a resume
    # that found nothing better, the saved best weights are loaded back and evaluated again)
    if best_val is None and (out_dir / ckpt.WEIGHTS).is_file():
        from safetensors.torch import load_file

        unwrapped.load_state_dict(load_file(str(out_dir / ckpt.WEIGHTS)))
        best_val = evaluate(accelerator, model, val_dl, cfg)
    elif best_val is None:
        best_val = evaluate(accelerator, model, val_dl, cfg)
    wall = time.time() - t_start
    resized = int(accelerator.reduce(torch.tensor(state.resized, device=accelerator.device), "sum"))
    metrics = {
        "best_step": state.best_step,
        "steps": state.step,
        "stopped_early": state.step < cfg.max_steps,
        "select_metric": cfg.select_metric,
        "validation": {k: best_val.get(k) for k in ("loss", "micro_auc", "macro_auc", "auc_findings")},
        "train_images_seen": state.images,
        "resized_images": wrong_size,  # distinct studies per split whose image was not the model's size
        "resized_image_reads": resized,  # resize operations during training (every pass)
        "rationales": cover,
        "tokenizer_check": tok_check,
        "num_processes": accelerator.num_processes,
        "mixed_precision": cfg.mixed_precision,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "wall_s": round(wall, 1),
        "images_per_s": round(state.images / max(wall, 1e-9), 2),
    }
    if not (out_dir / ckpt.WEIGHTS).is_file():  # resumed past max_steps with no saved best: keep these
        weights = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            ckpt.save_weights(model_cfg, weights, out_dir)
    if accelerator.is_main_process:
        if "probs" in best_val:
            th, f1 = ckpt.f1_thresholds(best_val["probs"], best_val["targets"], best_val["mask"])
            ckpt.save_thresholds(th, out_dir, {"chosen_on": "validate", "f1": [None if np.isnan(x) else float(x) for x in f1]})
        cfglib.write_text_atomic(out_dir / ckpt.METRICS, json.dumps(metrics, indent=2, default=str) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def _check_finite(accelerator, loss: torch.Tensor, batch, ds, state: TrainState, out_dir: Path) -> None:
    """Every process agrees on stopping when any has a non-finite loss; the message names its studies."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], device=accelerator.device)
    if float(accelerator.reduce(bad, "sum")) == 0:
        return
    from accelerate.utils import gather_object

    ids = [ds.study_ids[i] for i in batch["index"].tolist()] if bad.item() else []
    ids = gather_object(ids)
    kept = f"best checkpoint so far kept in {out_dir} (step {state.best_step})" if (out_dir / ckpt.WEIGHTS).is_file() \
        else "no checkpoint was written yet"
    raise NonFiniteLoss(f"non-finite loss at step {state.step + 1} (epoch {state.epoch}); batch studies: "
                        f"{', '.join(ids[:32])}; {kept}")


# ----------------------------------------------------------------------------- entry points

def train_from_paths(cfg: StageConfig, out_dir: str | Path, prepared: str | Path, tokenizer_dir: str | Path,
                     rationales: str | Path | None, resume: bool = False, seed: int = 0) -> dict[str, Any]:
    from student.data import load_prepared_cache, load_rationale_cache

    tokenizer = load_tokenizer(tokenizer_dir)
    data = load_prepared_cache(prepared)
    cache = None
    if cfg.needs_rationales:
        if rationales is None:
            raise DataError(None, "w_kd, w_emb or w_tok > 0: give --rationales (the teacher's rationale cache)")
        cache = load_rationale_cache(rationales)
    return train(cfg, out_dir, data, tokenizer, cache, resume=resume, tokenizer_dir=tokenizer_dir,
                 rationale_path=rationales, seed=seed)


def run_stage(cfg: StageConfig, ctx) -> dict[str, Any]:
    """Pipeline stage: prepared cache, rationale cache and teacher tokenizer from the upstream stages."""
    metrics = train_from_paths(
        cfg,
        ctx.stage_dir("student"),
        prepared=cfg.prepared or ctx.stage_dir("prepare"),
        tokenizer_dir=cfg.tokenizer or ctx.stage_dir("teacher_train"),
        rationales=cfg.rationales or ctx.stage_dir("teacher_generate"),
        seed=ctx.seed,
    )
    cover = metrics.get("rationales") or {}
    return {
        "checkpoint": str(ctx.stage_dir("student")),
        "val_micro_auc": metrics["validation"]["micro_auc"],
        "val_macro_auc": metrics["validation"]["macro_auc"],
        "best_step": metrics["best_step"],
        "steps": metrics["steps"],
        "missing_rationales": cover.get("missing_rationale", 0),
        "images_per_s": metrics["images_per_s"],
    }


def main(argv: list[str] | None = None, prog: str = "kdistill student train") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the student (image encoder + report decoder + 14 finding heads) with accelerate. "
                    "Several processes: accelerate launch [--config_file accelerate_config.yaml] -m kdistill.cli "
                    "student train ...",
    )
    parser.add_argument("--prepared", required=True, help="prepared image cache (kdistill data prepare)")
    parser.add_argument("--tokenizer", required=True, help="the teacher folder (its tokenizer is shared)")
    parser.add_argument("--rationales", help="the teacher's rationale cache folder (needed when w_kd/w_emb/w_tok > 0)")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    parser.add_argument("--config", help="YAML with the student settings (a run config's 'student' section or a bare one)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT/checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=50 loss.kd=0")
    args = parser.parse_args(argv)
    section = None
    if args.config and "student" in (cfglib.read_yaml(args.config) or {}):
        section = "student"
    cfg = cfglib.load(StageConfig, args.config, args.overrides, section=section)
    try:
        metrics = train_from_paths(cfg, args.out, args.prepared, args.tokenizer, args.rationales, args.resume, args.seed)
    except NonFiniteLoss as err:
        print(f"{prog}: stopped: {err}", file=sys.stderr)
        return 1
    v = metrics["validation"]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"student checkpoint: {args.out}  steps {metrics['steps']} (best {metrics['best_step']})  "
          f"val micro-AUC {v['micro_auc']:.4f}  macro-AUC {v['macro_auc']:.4f}  {metrics['images_per_s']} img/s")
    return 0
