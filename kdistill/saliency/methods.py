"""The saliency methods by name, for any model that returns ``{"logits", "maps"}`` and names its
Grad-CAM layer (``model.gradcam_target()``, as the student does): the one registry that
``kdistill eval`` (the saliency scores) and ``kdistill explain`` (the overlays) both read, so a
page and the benchmark always draw the same map for the same name.

* ``attention``: the model's own class-query maps (:class:`AttentionMaps`);
* ``gradcam``: Grad-CAM of the finding's logit at the model's feature map (:class:`GradCAM`);
* ``fused``: that Grad-CAM fused with sliding-window occlusion (:class:`FusedAttribution`).
  The occluder is ``window`` px (default: an eighth of the image side, at least 4) moved by
  ``stride`` (default: the window, i.e. an 8 x 8 grid of non-overlapping blocks, the patch grid
  of a 16-px-patch ViT at 128 px), so the cost is fixed in windows (64 forward passes per image)
  whatever the image size. Half-window strides (225 passes) cost about 3.5x as much: 0.93 s
  against 0.29 s per map for the demo's student at 128 px, one thread of a shared 2-core CPU
  (``benchmarks/eval_saliency.py``), too slow for ``kdistill eval``'s default budget.

Each returns the benchmark's interface ``fn(model, images (B, C, H, W), finding) -> (B, H, W)``
float32 maps in [0, 1] (min-max normalised per map).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import Tensor

from kdistill.saliency.attention import AttentionMaps
from kdistill.saliency.base import BaseAttribution
from kdistill.saliency.fusion import FusedAttribution
from kdistill.saliency.gradcam import GradCAM

METHOD_NAMES = ("attention", "gradcam", "fused")
TITLES = {"attention": "class-query attention", "gradcam": "Grad-CAM", "fused": "Grad-CAM x occlusion (fused)"}


def occlusion_window(side: int, window: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """The fused method's occluder (window, stride) for an image side: side/8 (>= 4), stride = window."""
    w = window if window is not None else max(4, int(side) // 8)
    return int(w), int(stride if stride is not None else w)


def build_method(name: str, model: Any, images_side: int, window: int | None = None,
                 stride: int | None = None) -> BaseAttribution:
    """The attribution object ``name`` on ``model``."""
    if name == "attention":
        return AttentionMaps(model)
    if name == "gradcam":
        return GradCAM.from_model(model)
    if name == "fused":
        target = getattr(model, "gradcam_target", None)
        if target is None:
            raise TypeError(f"{type(model).__name__} has no gradcam_target(): the fused method needs its Grad-CAM layer")
        layers, reshape = target()
        w, s = occlusion_window(images_side, window, stride)
        return FusedAttribution.from_model(model, layers, reshape, window=w, stride=s)
    raise ValueError(f"unknown saliency method {name!r}; available: {', '.join(METHOD_NAMES)}")


def saliency_method(name: str, window: int | None = None, stride: int | None = None) -> Callable[[Any, Tensor, Any], np.ndarray]:
    """``fn(model, images, finding) -> maps (B, H, W)`` for method ``name``. The method is rebuilt
    for each model it is given, so a randomised copy (the sanity check) is explained by the copy."""
    if name not in METHOD_NAMES:
        raise ValueError(f"unknown saliency method {name!r}; available: {', '.join(METHOD_NAMES)}")

    def explain(model: Any, images: Tensor, finding: Any) -> np.ndarray:
        return build_method(name, model, int(images.shape[-1]), window, stride)(images, finding)

    explain.__name__ = name
    return explain


__all__ = ["METHOD_NAMES", "TITLES", "build_method", "occlusion_window", "saliency_method"]
