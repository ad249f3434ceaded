"""What every training loop shares: the learning-rate schedule, CPU threads, and resumable
checkpoints of the training state.

The three loops (``teacher.pretrain``, ``teacher.train``, ``student.train``) speak one vocabulary
of knobs: ``max_steps`` (optimizer steps), ``save_every`` (steps between resumable states; 0:
never), ``num_threads`` (CPU threads per process; 0: torch's default for one process, the cores
divided among processes for several), ``mixed_precision`` (``no`` / ``bf16`` / ``fp16``, as
accelerate; ``bf16_if_native``: bf16 where the hardware computes it natively, else fp32) and
``resume`` (continue from the newest state in the output folder).

Checkpoints (``OUT/checkpoints/step_N/``): an accelerate ``save_state`` folder (model, optimizer,
RNG states) plus ``state.json`` (the loop's counters, the schedule's state, and the hash of the
config that made it), written last, so a folder with ``state.json`` is complete. A state made by
another config is never resumed from.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from kdistill.io import atomic_dir, write_json

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


def warmup_cosine(warmup: int, total: int, floor: float = 0.0, warmup_from_zero: bool = True) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warm-up over ``warmup`` steps, then cosine decay to
    ``floor`` x the peak at ``total``.

    ``warmup_from_zero``: the warm-up factor is ``step / warmup`` (the first step at 0, as
    transformers' ``get_cosine_schedule_with_warmup``; the student's schedule), else
    ``(step + 1) / warmup`` (the teacher's, whose first step already learns).
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step if warmup_from_zero else step + 1) / max(warmup, 1)
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def cosine_schedule(optimizer, warmup: int, total: int, floor: float = 0.0, warmup_from_zero: bool = True):
    """``torch.optim.lr_scheduler.LambdaLR`` over :func:`warmup_cosine`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, floor, warmup_from_zero))


def native_bf16(cpu: bool = False, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether bf16 runs natively here: a CUDA device with bf16, or (``cpu``, or no CUDA) a CPU with
    AVX512-BF16 or AMX. Without them torch emulates bf16 on the CPU and a step is slower than fp32
    (the demo's ResNet student's full step: 2.4x slower on an AVX512 CPU without BF16, 1.6x faster
    with it; benchmarks/results/tower_step_time*.json)."""
    if not cpu and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # not Linux: no way to tell cheaply, so the safe choice
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def new_accelerator(cpu: bool = False, mixed_precision: str | None = None, **kwargs: Any):
    """An ``accelerate.Accelerator`` with this loop's settings. fp16 on the CPU becomes "no" (CPUs
    autocast bf16 only); ``bf16_if_native`` becomes "bf16" or "no" by :func:`native_bf16`.
    ``kdistill run`` trains the teacher and the student in one process, and accelerate keeps its state process-wide, refusing a second Accelerator with another
    ``mixed_precision``: the previous loop's AcceleratorState is dropped first, keeping the
    process group (PartialState), so each loop gets its own precision under torchrun too."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if mixed_precision == "bf16_if_native":
        mixed_precision = "bf16" if native_bf16(cpu) else "no"
    if cpu and mixed_precision == "fp16":
        mixed_precision = "no"
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, **kwargs)


def set_num_threads(num_threads: int, num_processes: int = 1) -> int:
    """Torch's CPU threads for this process (see the module docstring); returns the count in use.
    Several processes each using every core would oversubscribe them many times over."""
    if num_threads:
        torch.set_num_threads(num_threads)
    elif num_processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes))
    return torch.get_num_threads()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return None  # LambdaLR keeps its lambdas as None in state_dict


class Checkpoints:
    """Resumable training states of one run under ``out_dir/checkpoints``."""

    def __init__(self, out_dir: str | Path, config_hash: str, keep: int = 2):
        self.root = Path(out_dir) / "checkpoints"
        self.config_hash = config_hash
        self.keep = keep

    def all(self) -> list[Path]:
        found = [p for p in self.root.glob("step_*") if (p / STATE_FILE).is_file()] if self.root.is_dir() else []
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete state made by this config, as (folder, state.json content)."""
        for path in reversed(self.all()):
            try:
                blob = json.loads((path / STATE_FILE).read_text())
            except (json.JSONDecodeError, OSError):
                continue
            if blob.get("config_hash") != self.config_hash:
                log.warning("%s was made with another config; not resuming from it", path)
                return None
            return path, blob
        return None

    def save(self, accelerator, step: int, state: dict[str, Any]) -> Path:
        """``save_state`` into ``step_N`` (built under a temporary name, then swapped in) and prune
        to the newest ``keep``. Every process calls it; the main process writes the files."""
        target = self.root / f"step_{step}"
        if accelerator.num_processes == 1:
            with atomic_dir(target) as tmp:
                accelerator.save_state(str(tmp))
                write_json(tmp / STATE_FILE, {"config_hash": self.config_hash, **state}, indent=None,
                           default=_json_default)
        else:
            # Several processes write into one folder they all know by name: state.json, written
            # last by the main process, marks it complete.
            accelerator.save_state(str(target))
            if accelerator.is_main_process:
                write_json(target / STATE_FILE, {"config_hash": self.config_hash, **state}, indent=None,
                           default=_json_default)
        if accelerator.is_main_process and self.keep > 0:
            for old in self.all()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return target

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
