"""The student's objective, one small function per term, summed with weights.

L = w_cls * masked BCE                          (findings; mask from the uncertain-label policy)
  + w_rep * caption CE on the report
  + w_kd  * caption CE on the teacher's rationale  (sequence-level KD)
  + w_emb * feature KD: (1 - cos) + InfoNCE between the student's pooled multimodal embedding
            (projected to the teacher's size) and the teacher's rationale embedding
Another term (an explanation-guided loss on the finding maps) joins by adding its name to
``LossWeights`` and its value to the dict ``combine`` sums.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from student.text import IGNORE_INDEX


@dataclasses.dataclass
class LossWeights:
    cls: float = 1.0
    rep: float = 1.0
    kd: float = 1.0
    emb: float = 0.2  # 0.5 with the image-side (prompt) embedding stalled the tower on one validation seed
    temperature: float = 0.1  # InfoNCE temperature of the feature-KD term

    def validate(self) -> None:
        for name in ("cls", "rep", "kd", "emb"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")

    def terms(self) -> dict[str, float]:
        return {"cls": self.cls, "rep": self.rep, "kd": self.kd, "emb": self.emb}


def classification_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the entries the label policy keeps (mask 1)."""
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return (per_entry * mask).sum() / mask.sum().clamp_min(1.0)


def caption_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of next-token logits (B, L-1, V) against labels (B, L) shifted by one."""
    targets = labels[:, 1:]
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # keeps the graph (DDP) when no row of the batch has this text
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine similarity) between paired embeddings."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE: row i of the student should pick row i of the teacher and back."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    logits = s @ t.T / temperature
    target = torch.arange(s.shape[0], device=s.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def feature_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Align the student's pooled embedding with the teacher's: (1 - cos) + InfoNCE."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    return embedding_cosine(student, teacher) + info_nce(student, teacher, temperature)


def combine(values: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of the terms present; a term with weight 0 is left out of the graph."""
    total = None
    for name, value in values.items():
        w = weights.get(name, 0.0)
        if w:
            total = value * w if total is None else total + value * w
    if total is None:
        raise ValueError("every loss weight is 0: nothing to train")
    return total


def student_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All terms for one batch (those with weight > 0), and their weighted sum."""
    w = weights.terms()
    values: dict[str, torch.Tensor] = {}
    if w["cls"]:
        values["cls"] = classification_bce(out["logits"], batch["targets"], batch["target_mask"])
    if w["rep"]:
        values["rep"] = caption_ce(out["report_logits"], batch["report_labels"])
    if w["kd"]:
        values["kd"] = caption_ce(out["rationale_logits"], batch["rationale_labels"])
    if w["emb"]:
        # A split whose studies have no cached rationale carries no teacher embeddings at all.
        has = batch["has_rationale"] if "teacher_embedding" in batch else torch.zeros(len(out["embedding"]), dtype=torch.bool)
        teacher = batch.get("teacher_embedding", out["embedding"])
        values["emb"] = feature_kd(out["embedding"][has], teacher[has], weights.temperature)
    return combine(values, w), values
