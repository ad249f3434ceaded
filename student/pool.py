"""What ``kdistill student fewshot`` and ``kdistill student active`` share: the prepared cache's
studies held in memory (images as [0, 1] floats at the student's input size, labels, region
bits) and the student they start from (a trained checkpoint or a fresh one)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.errors import DataError


@dataclasses.dataclass
class Studies:
    """Rows of one or more prepared splits: ``images`` (n, 1, S, S) float32 in [0, 1],
    ``labels`` (n, 14) float32 (NaN blank), ``roi_bits`` (n, S0, S0) uint16 at the cache's size."""

    study_id: list[str]
    images: torch.Tensor
    labels: np.ndarray
    roi_bits: np.ndarray
    split: list[str]

    def __len__(self) -> int:
        return len(self.study_id)

    def subset(self, rows) -> "Studies":
        rows = np.asarray(rows, dtype=np.int64)
        return Studies([self.study_id[i] for i in rows], self.images[torch.as_tensor(rows)], self.labels[rows],
                       self.roi_bits[rows], [self.split[i] for i in rows])

    @property
    def has_region(self) -> np.ndarray:
        return self.roi_bits.reshape(len(self), -1).any(1)


def load_studies(prepared, splits: list[str], image_size: tuple[int, int], source: str = "prepared") -> Studies:
    """``splits`` of a prepared cache (a path or a DatasetDict) in memory, images resized to
    ``image_size`` when the cache's differ (bilinear, antialiased)."""
    from kdistill.data.images import to_unit_float
    from kdistill.data.prepare import load_prepared, read_batch

    if isinstance(prepared, (str, Path)):
        source = str(prepared)
        prepared = load_prepared(prepared)
    ids, imgs, labels, bits, names = [], [], [], [], []
    for split in splits:
        if split not in prepared:
            raise DataError(source, f"no split {split!r} (it has {', '.join(prepared)})")
        ds = prepared[split]
        if len(ds) == 0:
            continue
        cols = ["study_id", "image", "labels"] + (["roi_bits"] if "roi_bits" in ds.column_names else [])
        b = read_batch(ds, slice(0, len(ds)), columns=cols)
        ids += [str(s) for s in b["study_id"]]
        imgs.append(to_unit_float(b["image"]))
        labels.append(np.asarray(b["labels"], dtype=np.float32))
        bits.append(b["roi_bits"].astype(np.uint16) if "roi_bits" in b else np.zeros(b["image"].shape, np.uint16))
        names += [split] * len(ds)
    if not ids:
        raise DataError(source, f"no studies in the split(s) {', '.join(splits)}")
    images = torch.from_numpy(np.concatenate(imgs))[:, None]
    if tuple(images.shape[-2:]) != tuple(image_size):
        images = F.interpolate(images, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=True)
    return Studies(ids, images.contiguous(), np.concatenate(labels), np.concatenate(bits), names)


def build_student(model_cfg, checkpoint: str | None):
    """The student to train: the checkpoint's (its trained tower and heads) or a fresh one from
    ``model_cfg``, text-free either way (these loops use the image side only)."""
    from student.model import create_student

    if checkpoint:
        from student.checkpoint import load

        model = load(checkpoint)
        return model.train()
    return create_student(model_cfg, None).train()


def token_dropout(tokens: torch.Tensor, p: float, active: bool) -> torch.Tensor:
    """Dropout on the tower's tokens (the student has no dropout layer of its own); ``active``
    keeps it on at scoring time too (Monte-Carlo dropout)."""
    return F.dropout(tokens, p, training=active) if p > 0 else tokens


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def state_of(model) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
