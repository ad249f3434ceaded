"""``FewShotConfig``: every knob of ``kdistill student fewshot`` (the ``fewshot`` section of a run
config). Knob names follow the training loops' vocabulary (``max_steps``, ``num_threads``,
``seed``; see ``student.train_config``)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from kdistill.labels import FINDINGS
from student.config import StudentConfig


@dataclasses.dataclass
class FewShotConfig:
    model: StudentConfig = dataclasses.field(default_factory=StudentConfig)  # used when checkpoint is None
    # A trained student's folder (``kdistill student train``): its tower is the encoder. None: from scratch.
    checkpoint: str | None = None
    prepared: str | None = None  # the prepared cache; None in a pipeline run: the prepare stage's folder
    splits: list[str] = dataclasses.field(default_factory=lambda: ["train", "validate", "test"])
    # The findings episodes are drawn from: a study belongs to finding f when f is its only positive
    # among these. None: every finding except "No Finding".
    findings: list[str] | None = None
    # Findings kept out of training (the base findings are the others): evaluation episodes use only these.
    novel: list[str] = dataclasses.field(default_factory=lambda: ["Atelectasis", "Cardiomegaly", "Pleural Effusion"])
    ways: list[int] = dataclasses.field(default_factory=lambda: [2, 3])  # N of the evaluation episodes
    shots: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10])  # K of the evaluation episodes
    queries: int = 5  # Q query studies per class (training and evaluation)
    # The image embedding the prototypes live in: "flatten" (the feature map's tokens concatenated,
    # as ProtoNet flattens its conv features: where a finding is stays in it) or "mean" (their mean).
    embedding: Literal["flatten", "mean"] = "flatten"
    train_ways: int = 2
    train_shots: int = 5
    # Weight of the Grad-CAM Dice loss on the support studies that have regions (EGxFSL); 0: the
    # unguided prototypical baseline, same code.
    gcam_dice: float = 1.0
    max_steps: int = 200  # training episodes (one optimizer step each); 0: evaluate the encoder as it is
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_episodes: int = 600  # per (N, K)
    seed: int = 0
    num_threads: int = 0  # torch CPU threads; 0: torch's default

    def validate(self) -> None:
        for name in ("queries", "train_shots", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps < 0 or self.num_threads < 0:
            raise ValueError("max_steps and num_threads must be >= 0")
        if self.train_ways < 2 or not self.ways or min(self.ways) < 2:
            raise ValueError(f"ways and train_ways must be >= 2, got ways={self.ways} train_ways={self.train_ways}")
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if self.gcam_dice < 0 or not self.lr > 0:
            raise ValueError("gcam_dice must be >= 0 and lr > 0")
        unknown = [f for f in (self.findings or []) + list(self.novel) if f not in FINDINGS]
        if unknown:
            raise ValueError(f"unknown finding(s) {unknown}; findings are {', '.join(FINDINGS)}")
        if not self.novel:
            raise ValueError("novel must name at least one finding (the findings never trained on)")
        missing = [f for f in self.novel if f not in self.finding_set]
        if missing:
            raise ValueError(f"novel findings {missing} are not in findings {self.finding_set}")

    @property
    def finding_set(self) -> list[str]:
        return list(self.findings) if self.findings else [f for f in FINDINGS if f != "No Finding"]

    @property
    def base(self) -> list[str]:
        return [f for f in self.finding_set if f not in self.novel]
