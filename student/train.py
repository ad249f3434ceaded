"""``kdistill student train``: the student's training loop, with accelerate end to end.

Read it top to bottom: :func:`train` calls :func:`setup` (accelerator, data, model, optimizer,
schedule, resumed state), a sanity pass of :func:`validate` on two validation batches, :func:`fit`
(the loop: a step, then logging, validation and resumable states on their schedules) and
:func:`finish` (thresholds and metrics from the best weights' validation pass). Around it:
``student.train_cli`` (the command, the pipeline stage; re-exported here), ``student.train_data``
(datasets), ``student.train_support`` (accelerator, logs, the per-batch pieces of a step) and
``student.train_config``.

One CPU process, several CPU processes (gloo), one or many GPUs (DDP; FSDP through an accelerate
config) run the same code: ``accelerate launch --config_file accelerate_config.yaml -m kdistill.cli
student train ...``. Mixed precision, gradient accumulation, clipping, AdamW + cosine schedule with
warmup, validation every ``eval_every`` steps (micro-AUC, loss), the best weights kept as the
checkpoint, early stopping, a resumable state every ``save_every`` steps that ``resume``
continues on the same schedule (same weights as an uninterrupted run).

Output folder (the checkpoint, DESIGN.md): config.json, model.safetensors, tokenizer files,
thresholds.json, metrics.json; plus train_log.csv, training_config.json, checkpoints/step_N/
(resumable states, ``kdistill.training.Checkpoints``) and tensorboard logs when tensorboard is
installed.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from kdistill import config as cfglib
from kdistill import scoring
from kdistill.errors import DataError
from kdistill.io import nonfinite_to_none, write_json
from kdistill.outputs import own_output
from kdistill.training import Checkpoints, cosine_schedule
from student import checkpoint as ckpt
from student.augment import augment
from student.losses import student_loss
from student.train_config import StudentTrainConfig
from student.train_data import build_datasets
from student.train_cli import main, run_stage, train_from_paths  # noqa: F401 (the stage's entry points)
from student.train_support import (CsvLog, NonFiniteLoss, RunningMeans, check_finite, clear_previous_run,
                                   global_pair_scales, make_accelerator, model_inputs, param_groups, selection_score)

log = logging.getLogger("kdistill.student")


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


@dataclasses.dataclass
class Run:
    """Everything :func:`setup` builds and the other steps use."""

    cfg: StudentTrainConfig
    out_dir: Path
    seed: int
    accelerator: Any
    model: Any  # prepared (DDP-wrapped) model
    model_cfg: Any
    data: Any  # student.train_data.TrainingData
    train_dl: Any
    val_dl: Any
    sampler: Any
    optimizer: Any
    scheduler: Any
    checkpoints: Checkpoints
    state: TrainState
    resumed_from: Path | None
    wrong_size: dict[str, int | None]
    csv_log: "CsvLog"
    started: float
    best_val: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- the steps

# What marks a folder as a student checkpoint this tool wrote (kdistill.outputs.claim_folder):
# its training config, or a resumable state of an interrupted run.
MARKERS = ("training_config.json", "checkpoints/step_*/state.json")


def train(cfg: StudentTrainConfig, out_dir: str | Path, prepared, tokenizer, rationales=None, *,
          resume: bool | None = None, tokenizer_dir: str | Path | None = None,
          rationale_path: str | Path | None = None, seed: int = 0, prepared_path: str | Path | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Train a student and write its checkpoint folder to ``out_dir``; returns metrics.json's content.

    ``prepared``: DatasetDict with train/validate splits (prepared-cache columns); ``rationales``:
    the teacher's rationale Dataset (needed when w_kd, w_emb or w_tok > 0). ``resume`` overrides
    ``cfg.resume``. ``out_dir`` must be new, empty or a student folder this tool wrote, unless
    ``overwrite``; it is locked against other writers while training runs.
    """
    if resume is not None:
        cfg = dataclasses.replace(cfg, resume=resume)
    main_process = int(os.environ.get("RANK", "0")) == 0
    with own_output(out_dir, "student checkpoint folder", MARKERS, overwrite, enabled=main_process):
        run = setup(cfg, out_dir, prepared, tokenizer, rationales, tokenizer_dir, rationale_path, seed, prepared_path)
        sanity = validate(run, max_batches=2)
        if not math.isfinite(sanity["loss"]):
            raise NonFiniteLoss(f"the sanity pass on two validation batches gave loss {sanity['loss']}")
        log.info("sanity pass on 2 validation batches: loss %.4f", sanity["loss"])
        fit(run)
        return finish(run)


def setup(cfg: StudentTrainConfig, out_dir: str | Path, prepared, tokenizer, rationales,
          tokenizer_dir, rationale_path, seed: int, prepared_path=None) -> Run:
    """Accelerator, datasets, model, loaders, optimizer and schedule; then the resumed state or a
    clean folder, the training config and the tokenizer written beside the checkpoint."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from student.data import Collate, EpochSampler
    from student.model import create_student

    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed if cfg.seed is not None else seed
    accelerator = make_accelerator(cfg, out_dir)
    set_seed(seed)

    data = build_datasets(cfg, prepared, tokenizer, rationales, tokenizer_dir, rationale_path, prepared_path)
    if len(data.train) < cfg.batch_size * accelerator.num_processes:
        raise DataError(None, f"{len(data.train)} training studies: fewer than one batch "
                              f"({cfg.batch_size} x {accelerator.num_processes} processes)")
    model = create_student(data.model_cfg, tokenizer)
    wrong_size = {name: ds.count_wrong_size(model.image_size) for name, ds in (("train", data.train), ("validate", data.validate))}
    if any(wrong_size.values()):
        log.warning("images not %dx%d are resized on the fly: %s", *model.image_size, wrong_size)
    if cfg.loss.needs_regions:  # only then: no cost for the other recipes
        for ds in (data.train, data.validate):
            ds.attach_regions(model.grid)
    collate = Collate(model.tokens, model.image_size, data.model_cfg.max_text_len, cfg.needs_rationales, model.grid)
    sampler = EpochSampler(len(data.train), seed)
    train_dl = DataLoader(data.train, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=cfg.num_workers, drop_last=True)
    val_dl = DataLoader(data.validate, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate,
                        num_workers=cfg.num_workers)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    # Scheduled in optimizer steps and stepped by us (not prepared: accelerate would step it once
    # per process), so the schedule is the same for any number of processes.
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, cfg.max_steps)
    model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)

    checkpoints = Checkpoints(out_dir, cfg.training_hash(seed), cfg.keep_checkpoints)
    state, resumed_from = TrainState(), None
    found = checkpoints.latest() if cfg.resume else None
    if found is not None:
        resumed_from, blob = found
        accelerator.load_state(str(resumed_from))
        state = TrainState(**blob["state"])
        scheduler.load_state_dict(blob["scheduler"])
        log.info("resumed from %s (step %d)", resumed_from, state.step)
    elif accelerator.is_main_process:
        clear_previous_run(out_dir, checkpoints)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cfglib.save_json({**cfglib.to_dict(cfg), "model": cfglib.to_dict(data.model_cfg), "seed": seed},
                         out_dir / "training_config.json")
        if tokenizer is not None:
            ckpt.save_tokenizer(tokenizer, out_dir)
    if accelerator.trackers:
        accelerator.init_trackers("student", config={"lr": cfg.lr, "batch_size": cfg.batch_size, "seed": seed,
                                                     **{f"w_{k}": v for k, v in cfg.loss.terms().items()}})
    csv_log = CsvLog(out_dir / "train_log.csv", accelerator.is_main_process, state.step if resumed_from else None)
    # the model's own config: what the tower decided (map_grid) and the vocabulary go into config.json
    model_cfg = accelerator.unwrap_model(model).cfg
    return Run(cfg, out_dir, seed, accelerator, model, model_cfg, data, train_dl, val_dl, sampler, optimizer,
               scheduler, checkpoints, state, resumed_from, wrong_size, csv_log, started)


def validate(run: Run, max_batches: int | None = None) -> dict[str, Any]:
    """Loss and AUCs over the validation loader, gathered from every process."""
    accelerator, model, cfg = run.accelerator, run.model, run.cfg
    model.eval()
    probs, targets, masks, losses, sizes = [], [], [], [], []
    with torch.no_grad():
        for i, batch in enumerate(run.val_dl):
            if max_batches is not None and i >= max_batches:
                break
            out = model(**model_inputs(batch, cfg))
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
        result.update(scoring.auc_summary(p, t, m))
        result["probs"], result["targets"], result["mask"] = p, t, m
    return result


def fit(run: Run) -> None:
    """The loop, epoch by epoch, from the (resumed) state to ``max_steps`` or an early stop."""
    from tqdm.auto import tqdm

    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="student")
    window = RunningMeans()
    stop = state.step >= cfg.max_steps
    run.model.train()
    try:
        while not stop:
            loader = accelerator.skip_first_batches(run.train_dl, state.batch_in_epoch) if state.batch_in_epoch else run.train_dl
            # accelerate's loader sets its sampler's epoch from its own pass counter on every __iter__;
            # ours (restored on resume) must win, or a resumed run would replay epoch 0's order.
            loader.set_epoch(state.epoch)
            run.sampler.set_epoch(state.epoch)
            for batch in loader:
                loss, terms = _train_step(run, batch)
                window.add(loss, terms, len(batch["images"]) * accelerator.num_processes)
                if not accelerator.sync_gradients:
                    continue
                run.scheduler.step()
                state.step += 1
                bar.update(1)
                stop = _after_step(run, window, bar)
                if stop:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    finally:
        bar.close()
    accelerator.wait_for_everyone()


def finish(run: Run) -> dict[str, Any]:
    """Thresholds and metrics from the best weights' validation pass (after a resume that found
    nothing better, the saved best weights are loaded back and evaluated again)."""
    cfg, state, accelerator, out_dir = run.cfg, run.state, run.accelerator, run.out_dir
    best_val = run.best_val
    if best_val is None and (out_dir / ckpt.WEIGHTS).is_file():
        from safetensors.torch import load_file

        accelerator.unwrap_model(run.model).load_state_dict(load_file(str(out_dir / ckpt.WEIGHTS)))
        best_val = validate(run)
    elif best_val is None:
        best_val = validate(run)
    wall = time.time() - run.started
    resized = int(accelerator.reduce(torch.tensor(state.resized, device=accelerator.device), "sum"))
    metrics = {
        "best_step": state.best_step,
        "steps": state.step,
        "stopped_early": state.step < cfg.max_steps,
        "select_metric": cfg.select_metric,
        "validation": {k: nonfinite_to_none(best_val.get(k)) for k in ("loss", "micro_auc", "macro_auc", "auc_findings")},
        "train_images_seen": state.images,
        "resized_images": run.wrong_size,  # distinct studies per split whose image was not the model's size
        "resized_image_reads": resized,  # resize operations during training (every pass)
        "rationales": run.data.rationale_coverage,
        "tokenizer_check": run.data.tokenizer_check,
        "num_processes": accelerator.num_processes,
        "mixed_precision": cfg.mixed_precision,
        "precision_used": accelerator.mixed_precision,  # what "auto" / "bf16_if_native" resolved to here
        "resumed_from": str(run.resumed_from) if run.resumed_from else None,
        "wall_s": round(wall, 1),
        "images_per_s": round(state.images / max(wall, 1e-9), 2),
    }
    if not (out_dir / ckpt.WEIGHTS).is_file():  # resumed past max_steps with no saved best: keep these
        weights = accelerator.get_state_dict(run.model)
        if accelerator.is_main_process:
            ckpt.save_weights(run.model_cfg, weights, out_dir)
    if accelerator.is_main_process:
        if "probs" in best_val:
            th, f1, defaulted = scoring.choose_thresholds(best_val["probs"], best_val["targets"], best_val["mask"],
                                                          policy=cfg.threshold_policy)
            scoring.save_thresholds(out_dir, th, chosen_on="validate", policy=cfg.threshold_policy,
                                    n_studies=len(best_val["probs"]), defaulted=defaulted,
                                    f1=[nonfinite_to_none(x) for x in f1])
        write_json(out_dir / ckpt.METRICS, metrics, default=str)
        from student.card import write_model_card

        write_model_card(out_dir, cfg, run.model_cfg, metrics, run.data.train, run.data.validate)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


# ----------------------------------------------------------------------------- inside the loop

def _train_step(run: Run, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward, loss, backward, clip and optimizer step of one micro-batch (accumulated)."""
    cfg, state, accelerator, model = run.cfg, run.state, run.accelerator, run.model
    if cfg.augment.enabled:
        # seeded by position in the schedule, so a resumed run draws the same jitter
        g = torch.Generator().manual_seed(((run.seed * 100003 + state.epoch) * 10007 + state.batch_in_epoch) * 64
                                          + accelerator.process_index)
        batch["images"] = augment(batch["images"], cfg.augment, g)
    with accelerator.accumulate(model):
        out = model(**model_inputs(batch, cfg))
        loss, terms = student_loss(out, batch, cfg.loss, global_pair_scales(run, batch))
        check_finite(run, loss, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.clip_grad > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    state.batch_in_epoch += 1
    state.images += len(batch["images"]) * accelerator.num_processes
    state.resized += int(batch["resized"])
    return loss, terms


def _after_step(run: Run, window: "RunningMeans", bar) -> bool:
    """Logging, validation (best weights kept), early stopping and resumable states on their
    schedules after optimizer step ``state.step``. Returns whether to stop."""
    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    stop = False
    row: dict[str, Any] = {}
    if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
        row = window.flush(accelerator)
    if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
        t_eval = time.time()
        last_val = validate(run, cfg.max_eval_batches)
        window.started += time.time() - t_eval  # images/s counts training time only
        row.update(val_loss=round(last_val["loss"], 5), val_micro_auc=last_val.get("micro_auc"),
                   val_macro_auc=last_val.get("macro_auc"))
        score = selection_score(last_val, cfg.select_metric)
        if state.best is None or score > state.best:
            state.best, state.best_step, state.bad_evals = score, state.step, 0
            run.best_val = last_val
            # get_state_dict gathers the full weights under FSDP/DeepSpeed: every rank calls it
            weights = accelerator.get_state_dict(run.model)
            if accelerator.is_main_process:
                ckpt.save_weights(run.model_cfg, weights, run.out_dir)
        else:
            state.bad_evals += 1
            if cfg.patience and state.bad_evals >= cfg.patience:
                log.info("early stop at step %d: no improvement in %d evaluations", state.step, cfg.patience)
                stop = True
    if row:
        row.update(step=state.step, epoch=state.epoch, lr=run.scheduler.get_last_lr()[0])
        run.csv_log.write(row)
        accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}, step=state.step)
        bar.set_postfix({k: row[k] for k in ("loss", "val_micro_auc") if row.get(k) is not None})
    if cfg.save_every and state.step % cfg.save_every == 0:
        run.checkpoints.save(accelerator, state.step,
                             {"state": dataclasses.asdict(state), "scheduler": run.scheduler.state_dict()})
    return stop or state.step >= cfg.max_steps
