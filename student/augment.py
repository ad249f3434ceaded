"""Training-time image augmentation for the student: small affine jitter and contrast/brightness.

No flips: a chest radiograph's left and right are the report's left and right (laterality words),
and the heart sits on one side. The phantom (and MIMIC-CXR) images are roughly aligned, so a few
percent of shift, scale and rotation, and a little intensity jitter, are label-preserving.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class AugmentConfig:
    enabled: bool = False
    shift: float = 0.04  # max translation, fraction of the image side
    scale: float = 0.05  # max relative zoom in or out
    rotate: float = 5.0  # max rotation, degrees
    contrast: float = 0.1  # max relative contrast change
    brightness: float = 0.05  # max brightness offset (images in [0, 1])

    def validate(self) -> None:
        for name in ("shift", "scale", "rotate", "contrast", "brightness"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0")
        if self.scale >= 1:
            raise ValueError("augment.scale must be < 1")


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> the same shape, each image with its own random jitter."""
    if not cfg.enabled:
        return images
    b = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(cfg.rotate))
    zoom = 1 + uniform(cfg.scale)
    tx, ty = uniform(2 * cfg.shift), uniform(2 * cfg.shift)  # grid units: the image spans [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    # border padding: a shifted radiograph continues its edge rather than showing black bars
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (1 + uniform(cfg.contrast)).to(images).view(b, 1, 1, 1)
    brightness = uniform(cfg.brightness).to(images).view(b, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0, 1)
