"""Occlusion: intervention evidence. Hide a patch, see how much the finding's probability drops.

Zeiler & Fergus (2014) sliding-window occlusion. Each pixel's evidence is the mean drop of
sigmoid(logit[finding]) over every window that covers it:

    E(x) = mean over windows W containing x of  [p(image) - p(image with W set to baseline)]

clipped at 0 (a window whose removal raises the probability is evidence against, not for).
Unlike a gradient this measures what the model actually does when the region is gone, at
the price of one forward pass per window and a resolution of about ``stride`` pixels.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kdistill.saliency.base import BaseAttribution, model_logits


def _positions(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis; the last window is flush with the edge so every pixel is covered."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def baseline_image(images: Tensor, baseline: float | str) -> Tensor:
    """What an occluded pixel becomes: a constant, or ``"mean"`` (each image's per-channel mean)."""
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if isinstance(baseline, str):
        raise ValueError(f"baseline must be a number or 'mean', got {baseline!r}")
    return torch.full_like(images, float(baseline))


class OcclusionAttribution(BaseAttribution):
    """Sliding-window occlusion for ``model(images) -> logits`` (or a dict with ``"logits"``).

    ``window``/``stride`` in pixels; ``baseline`` the occluder value (0.0 = the input-space
    zero, which for mean/std-normalised inputs is the dataset mean; or ``"mean"``);
    ``batch_size`` occluded images per forward pass.
    """

    def __init__(self, model: Callable, window: int = 8, stride: int = 4, baseline: float | str = 0.0,
                 batch_size: int = 128):
        super().__init__(model)
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
        self.window, self.stride, self.baseline, self.batch_size = window, stride, baseline, batch_size

    def _probability(self, images: Tensor, idx: Tensor) -> Tensor:
        logits = model_logits(self.model(images))
        return torch.sigmoid(logits.gather(1, idx[:, None])[:, 0].float())

    def _raw_maps(self, images: Tensor, idx: Tensor) -> Tensor:
        b, _, h, w = images.shape
        fill = baseline_image(images, self.baseline)
        p0 = self._probability(images, idx)
        windows = [(y, x) for y in _positions(h, self.window, self.stride)
                   for x in _positions(w, self.window, self.stride)]
        evidence = torch.zeros(b, h, w, device=images.device)
        cover = torch.zeros(h, w, device=images.device)
        # Chunk over windows so one forward holds at most ~batch_size images.
        per_chunk = max(1, self.batch_size // b)
        for start in range(0, len(windows), per_chunk):
            chunk = windows[start:start + per_chunk]
            occluded = images.unsqueeze(0).repeat(len(chunk), 1, 1, 1, 1)  # (n, B, C, H, W)
            for k, (y, x) in enumerate(chunk):
                win = (slice(None), slice(None), slice(y, y + self.window), slice(x, x + self.window))
                occluded[k][win] = fill[win]
            p = self._probability(occluded.flatten(0, 1), idx.repeat(len(chunk))).view(len(chunk), b)
            for k, (y, x) in enumerate(chunk):
                evidence[:, y:y + self.window, x:x + self.window] += (p0 - p[k])[:, None, None]
                cover[y:y + self.window, x:x + self.window] += 1
        return (evidence / cover).clamp_min(0)


__all__ = ["OcclusionAttribution", "baseline_image"]
