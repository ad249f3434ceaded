"""Per-finding attention maps that a model computes itself (the student's class-query decoder)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kdistill.saliency.base import BaseAttribution


class AttentionMaps(BaseAttribution):
    """Adapter for ``model(images) -> {"maps": (B, K, h, w), ...}``: one map per finding.

    The finding's channel is taken as the model gives it (attention weights are already
    non-negative), bilinearly upsampled to the image size and min-max normalised, like every
    other method here. ``relu=True`` clips negative values first, for maps that are scores
    rather than attention weights.
    """

    def __init__(self, model: Callable, maps_key: str = "maps", relu: bool = False):
        super().__init__(model)
        self.maps_key = maps_key
        self.relu = relu

    def _raw_maps(self, images: Tensor, idx: Tensor) -> Tensor:
        output = self.model(images)
        if not isinstance(output, dict) or self.maps_key not in output:
            raise TypeError(f"AttentionMaps needs a model returning a dict with {self.maps_key!r}, "
                            f"got {type(output).__name__}")
        maps = output[self.maps_key]
        if maps.ndim != 4 or maps.shape[0] != images.shape[0]:
            raise ValueError(f"{self.maps_key!r} must be (B, findings, h, w), got {tuple(maps.shape)}")
        chosen = maps[torch.arange(maps.shape[0], device=maps.device), idx.to(maps.device)].float()
        return chosen.clamp_min(0) if self.relu else chosen


__all__ = ["AttentionMaps"]
