"""``StudentTrainConfig``: every knob of ``kdistill student train`` (the ``student`` section of a run
config). Knob names follow the shared vocabulary of the training loops (``kdistill.training``)."""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Literal

from student.augment import AugmentConfig
from student.config import StudentConfig
from student.losses import LossWeights


@dataclasses.dataclass
class StudentTrainConfig:
    model: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    loss: LossWeights = dataclasses.field(default_factory=LossWeights)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)  # training images only
    uncertain: Literal["ignore", "ones", "zeros"] = "ignore"
    # Scarce labels: the share of training studies whose finding labels the student may use (a
    # seeded draw per study, label_seed); every study keeps its report and rationale.
    label_fraction: float = 1.0
    label_seed: int = 0
    blank: Literal["zeros", "ignore"] = "zeros"
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    max_steps: int = 300  # optimizer steps
    clip_grad: float = 1.0  # 0: no clipping
    # "auto": what accelerate's launch config / environment says (default: none); "bf16_if_native":
    # bf16 where the hardware computes it natively (kdistill.training.native_bf16), else fp32.
    mixed_precision: Literal["auto", "no", "bf16", "fp16", "bf16_if_native"] = "auto"
    eval_every: int = 50
    save_every: int = 100  # resumable state every N steps (0: never)
    keep_checkpoints: int = 2
    # Continue from the newest resumable state in the output folder made by this same config
    # (a state of another config is never resumed from: the run starts over).
    resume: bool = True
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    select_metric: Literal["micro_auc", "loss"] = "micro_auc"
    # Operating points written to thresholds.json (kdistill.scoring.choose_thresholds): "prevalence"
    # cannot collapse to ~0 for a rare finding on a small validation split; "f1" maximises F1 there.
    threshold_policy: Literal["prevalence", "f1"] = "prevalence"
    seed: int | None = None  # None: the run's seed
    num_workers: int = 0
    num_threads: int = 0  # CPU threads per process; 0: the cores divided among the processes
    require_rationales: bool = False  # fail when a training study has no rationale (else count, train on)
    consistent_rationales_only: bool = True  # leave out rationales the labeler finds inconsistent
    max_eval_batches: int | None = None
    cpu: bool = False
    tensorboard: bool = False  # TensorBoard logs under the output folder: needs the extra, kdistill[tensorboard]
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
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if not self.lr > 0:  # also refuses NaN
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        # Checked with the config, not at the first log line: a run must not train the teacher
        # for minutes and then stop at the student for want of a logger.
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard: true needs the tensorboard package, which is not installed: "
                             "pip install 'kdistill[tensorboard]' (or set student.tensorboard=false)")

    @property
    def needs_rationales(self) -> bool:
        return self.loss.kd > 0 or self.loss.emb > 0 or self.loss.tok > 0

    def training_hash(self, seed: int) -> str:
        """What a resumable state must match: every knob that changes the run's course (not the
        input paths, not ``resume``, not logging)."""
        from kdistill.config import config_hash, to_dict

        knobs = {k: v for k, v in to_dict(self).items()
                 if k not in ("resume", "prepared", "rationales", "tokenizer", "tensorboard", "log_every",
                              "num_workers", "keep_checkpoints", "threshold_policy")}
        return config_hash({"config": knobs, "seed": seed})
