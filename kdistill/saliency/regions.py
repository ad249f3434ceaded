"""Expert regions as masks: the one decoder of the prepared cache's ``roi_bits``.

``roi_bits`` (B, S, S) uint16 holds bit i set where finding i (``kdistill.labels.FINDINGS``)
has an expert region. Training losses want one soft mask per finding at the map's resolution,
eval and explain want a binary mask per finding at the image's: both come from here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.labels import NUM_FINDINGS

_BITS = torch.arange(NUM_FINDINGS, dtype=torch.int32)


def finding_masks(roi_bits: Any) -> torch.Tensor:
    """(B, S, S) integer bitfields (any integer dtype, numpy or torch) -> bool (B, 14, S, S)."""
    bits = torch.as_tensor(np.asarray(roi_bits).astype(np.int32) if not torch.is_tensor(roi_bits) else roi_bits)
    if bits.ndim != 3:
        raise ValueError(f"roi_bits must be (B, S, S), got {tuple(bits.shape)}")
    bits = bits.to(torch.int32)
    return ((bits[:, None] >> _BITS.to(bits.device)[None, :, None, None]) & 1).bool()


def region_masks(roi_bits: Any, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-finding region masks at a map's ``grid`` (h, w) and which (study, finding) has one.

    Returns ``masks`` float32 (B, 14, h, w), each cell the share of its pixels inside the region
    (area pooling, so a region smaller than a cell still counts), and ``has_region`` bool
    (B, 14). A study without regions gives all-zero masks and no flags."""
    full = finding_masks(roi_bits).float()
    has = full.flatten(2).amax(-1) > 0
    h, w = int(grid[0]), int(grid[1])
    b, k, s, t = full.shape
    if (s, t) == (h, w):
        return full, has
    masks = F.adaptive_avg_pool2d(full.reshape(b * k, 1, s, t), (h, w)).reshape(b, k, h, w)
    return masks, has


def finding_mask(roi_bits: Any, finding: int) -> np.ndarray:
    """Binary mask (B, S, S) of one finding's region, numpy bool."""
    return ((np.asarray(roi_bits).astype(np.int64) >> int(finding)) & 1).astype(bool)


__all__ = ["finding_mask", "finding_masks", "region_masks"]
