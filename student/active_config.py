"""``ActiveConfig``: every knob of ``kdistill student active`` (the ``active`` section of a run
config). Knob names follow the training loops' vocabulary (``max_steps``, ``batch_size``,
``num_threads``, ``seed``; see ``student.train_config``)."""
from __future__ import annotations

import dataclasses

from student.config import StudentConfig

STRATEGIES = ("random", "entropy", "mc_dropout", "misalignment", "xgal")


@dataclasses.dataclass
class ActiveConfig:
    model: StudentConfig = dataclasses.field(default_factory=StudentConfig)  # used when checkpoint is None
    checkpoint: str | None = None  # a trained student's folder to start every run from; None: from scratch
    prepared: str | None = None  # None in a pipeline run: the prepare stage's folder
    pool_split: str = "train"  # the seed set and the unlabelled pool come from here
    test_split: str = "test"  # the fixed split the metric is recorded on, every round
    strategies: list[str] = dataclasses.field(default_factory=lambda: ["random", "entropy", "misalignment", "xgal"])
    seed: int = 0
    repeats: int = 1  # runs per strategy, seeds seed, seed + 1, ...
    seed_size: int = 20  # labelled studies before the first acquisition (a seeded random draw from the pool)
    acquire: int = 20  # studies acquired per round
    budget: int = 100  # studies acquired in all, beyond the seed set (stops at the pool's size, said so)
    # Warm start (the default): each round continues from the last round's weights with a fresh
    # optimizer, max_steps more steps; cheaper than retraining and, with the same per-round
    # schedule, the curve stays comparable across strategies. False: every round retrains from
    # the same initial weights.
    warm_start: bool = True
    max_steps: int = 60  # optimizer steps per round
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.1  # on the tower's tokens, in training and in the MC-dropout passes
    mc_passes: int = 10  # T stochastic passes of mc_dropout (BALD)
    xgal_lambda: float = 0.5  # xgal = lambda * uncertainty + (1 - lambda) * misalignment (rank-normalised)
    xgal_uncertainty: str = "entropy"  # entropy | mc_dropout
    num_threads: int = 0

    def validate(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ValueError(f"unknown strategies {bad or self.strategies}; choose from {', '.join(STRATEGIES)}")
        if self.xgal_uncertainty not in ("entropy", "mc_dropout"):
            raise ValueError(f"xgal_uncertainty must be entropy or mc_dropout, got {self.xgal_uncertainty!r}")
        for name in ("repeats", "seed_size", "acquire", "max_steps", "batch_size", "mc_passes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.budget < 0 or self.num_threads < 0:
            raise ValueError("budget and num_threads must be >= 0")
        if not 0.0 <= self.xgal_lambda <= 1.0:
            raise ValueError(f"xgal_lambda must be in [0, 1], got {self.xgal_lambda}")
        if not 0.0 <= self.dropout < 1.0 or not self.lr > 0:
            raise ValueError("dropout must be in [0, 1) and lr > 0")
