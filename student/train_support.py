"""What the student's training loop (``student.train``) uses besides its steps: the accelerator,
the optimizer's parameter groups, running means of the loss terms, the CSV log, the selection
score; and the pieces of one step that decide nothing: the model's inputs for a batch, the EGL
terms' global pair scales, the non-finite loss check."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import torch

from kdistill.training import Checkpoints, set_num_threads
from student import checkpoint as ckpt
from student.train_config import StudentTrainConfig

LOG_COLUMNS = ("step", "epoch", "lr", "loss", "cls", "rep", "kd", "emb", "tok", "ha", "dal", "gcam_dice", "val_loss", "val_micro_auc",
               "val_macro_auc", "images_per_s")


def make_accelerator(cfg: StudentTrainConfig, out_dir: Path):
    from accelerate import DistributedDataParallelKwargs

    from kdistill.training import new_accelerator

    trackers = "tensorboard" if cfg.tensorboard else None  # the config checked that it is installed
    # A loss term with weight 0 leaves part of the model out of the graph; DDP must then not wait
    # for its gradients (the search for unused parameters costs a graph traversal, so only then).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not all(cfg.loss.terms().values()))
    precision = None if cfg.mixed_precision == "auto" else cfg.mixed_precision
    acc = new_accelerator(cpu=cfg.cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                      log_with=trackers, project_dir=str(out_dir), kwargs_handlers=[ddp])
    if acc.device.type == "cpu":
        set_num_threads(cfg.num_threads, acc.num_processes)
    return acc


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Norms, biases, embeddings and learned queries are not decayed (as CLIP/CoCa training).
        (no_decay if p.ndim < 2 or "embedding" in name or "queries" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class RunningMeans:
    """Running means of the loss terms and the image rate since the last log row."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n, self.images, self.started = 0, 0, time.time()

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], images: int) -> None:
        for k, v in {"loss": loss, **terms}.items():  # tensors: no device sync per step
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1
        self.images += images

    def flush(self, accelerator) -> dict[str, Any]:
        avg = accelerator.reduce(torch.stack([self.sums[k] / self.n for k in self.sums]), "mean")
        row = {k: round(float(v), 5) for k, v in zip(self.sums, avg)}
        row["images_per_s"] = round(self.images / max(time.time() - self.started, 1e-9), 2)
        self.__init__()
        return row


def selection_score(metrics: dict[str, Any], select: str) -> float:
    if select == "loss":
        return -metrics["loss"]
    value = metrics.get("micro_auc", math.nan)
    return -metrics["loss"] * 1e-6 if math.isnan(value) else value  # no AUC (one class): fall back on loss


def clear_previous_run(out_dir: Path, checkpoints: Checkpoints) -> None:
    """A fresh run in a used folder: drop the old run's states and results (only the files this
    module writes), so old step_N folders are neither kept as newest nor mistaken for resumable."""
    checkpoints.clear()
    for name in (ckpt.WEIGHTS, ckpt.THRESHOLDS, ckpt.METRICS, ckpt.CONFIG, "train_log.csv"):
        (out_dir / name).unlink(missing_ok=True)


class CsvLog:
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


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf: names the step and the batch's studies; the best checkpoint is kept."""


def global_pair_scales(run, batch) -> dict[str, float] | None:
    """Under several processes, a factor per EGL term so that DDP's average of the processes'
    gradients is the gradient of the mean over the global batch's (study, finding) pairs, as one
    process on the whole batch gives: local pairs * processes / global pairs (0 where none)."""
    from student.losses import egl_pair_counts

    accelerator = run.accelerator
    counts = egl_pair_counts(batch, run.cfg.loss)
    if accelerator.num_processes == 1 or not counts:
        return None
    names = sorted(counts)
    local = torch.tensor([counts[k] for k in names], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local.clone(), "sum")
    p = accelerator.num_processes
    return {k: float(local[i] * p / total[i]) if float(total[i]) > 0 else 0.0 for i, k in enumerate(names)}


def check_finite(run, loss: torch.Tensor, batch) -> None:
    """Every process agrees on stopping when any has a non-finite loss: :class:`NonFiniteLoss`,
    whose message names the step, the batch's studies and the checkpoint kept."""
    accelerator, state, out_dir = run.accelerator, run.state, run.out_dir
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], device=accelerator.device)
    if float(accelerator.reduce(bad, "sum")) == 0:
        return
    from accelerate.utils import gather_object

    ids = [run.data.train.study_ids[i] for i in batch["index"].tolist()] if bad.item() else []
    ids = gather_object(ids)
    kept = f"best checkpoint so far kept in {out_dir} (step {state.best_step})" if (out_dir / ckpt.WEIGHTS).is_file() \
        else "no checkpoint was written yet"
    raise NonFiniteLoss(f"non-finite loss at step {state.step + 1} (epoch {state.epoch}); batch studies: "
                        f"{', '.join(ids[:32])}; {kept}")


def model_inputs(batch: dict[str, Any], cfg: StudentTrainConfig) -> dict[str, Any]:
    """The model's keyword arguments for a batch: only the inputs the loss terms in use need."""
    inputs = {"images": batch["images"]}
    if cfg.loss.gcam_dice:
        inputs["with_features"] = True
    if cfg.loss.rep:
        inputs["report_ids"] = batch["report_ids"]
    if cfg.needs_rationales:
        inputs["rationale_ids"] = batch["rationale_ids"]
        inputs["rationale_mask"] = batch["rationale_mask"]
        inputs["with_embedding"] = bool(cfg.loss.emb)
    return inputs
