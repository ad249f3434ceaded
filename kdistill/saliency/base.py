"""The shared base of every attribution method, and the small helpers they all use.

An attribution method answers one question: for each image in a batch, which pixels carry
the evidence for one finding? Every method returns maps of shape (B, H, W) at the input
size, min-max normalised per image to [0, 1] (the same normalisation as pytorch-grad-cam's
``scale_cam_image``), so maps from different methods can be compared and fused.

Models are generic: ``model(images)`` returns logits (B, 14), or a dict with ``"logits"``;
the explained score is ``sigmoid(logits[:, finding])``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# pytorch-grad-cam's epsilon in scale_cam_image; kept so our maps equal theirs.
NORM_EPS = 1e-7


def model_logits(output: Any) -> Tensor:
    """The (B, K) logits from a model's output: the tensor itself or ``output["logits"]``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise TypeError(f"model output must be a logits tensor or a dict with 'logits', got {type(output).__name__}")


def finding_indices(finding: int | Tensor | np.ndarray, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """One finding index per image, as a LongTensor (B,): an int applies to the whole batch."""
    if isinstance(finding, (int, np.integer)):
        return torch.full((batch,), int(finding), dtype=torch.long, device=device)
    idx = torch.as_tensor(finding, dtype=torch.long, device=device).reshape(-1)
    if idx.numel() == 1:
        return idx.expand(batch).clone()
    if idx.numel() != batch:
        raise ValueError(f"finding has {idx.numel()} entries for a batch of {batch}")
    return idx


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless callable)."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def finding_probability(model: Callable, images: Tensor, finding: int | Tensor, batch_size: int = 256) -> Tensor:
    """sigmoid(logit[finding]) per image, evaluated in chunks of ``batch_size`` images."""
    device = model_device(model)
    idx = finding_indices(finding, images.shape[0], device)
    out = []
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            logits = model_logits(model(images[start:start + batch_size].to(device)))
            out.append(torch.sigmoid(logits.gather(1, idx[start:start + batch_size, None])[:, 0].float()))
    return torch.cat(out)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run in eval mode (dropout off, batch-norm frozen) and restore every submodule's mode after.

    pytorch-grad-cam switches the model to eval for good; a student in the middle of training
    must get its training mode back.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def normalise_maps(maps: Tensor) -> Tensor:
    """Per-image min-max to [0, 1] over the trailing two dims (a constant map becomes 0)."""
    flat = maps.flatten(-2)
    flat = flat - flat.min(dim=-1, keepdim=True).values
    flat = flat / (NORM_EPS + flat.max(dim=-1, keepdim=True).values)
    return flat.view_as(maps)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, h, w) maps to (B, H, W), half-pixel centres (= cv2.INTER_LINEAR upsampling)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


class BaseAttribution:
    """One attribution method. Subclasses implement ``_raw_maps``; the base handles batching of
    findings, eval mode, upsampling and normalisation.

    ``method(images, finding)`` -> float32 numpy (B, H, W) in [0, 1];
    ``method.attribute(images, finding)`` -> the same as a torch tensor on the model's device.
    """

    #: subclasses that need autograd set this; the others run under no_grad
    needs_grad = False

    def __init__(self, model: Callable):
        self.model = model

    def __call__(self, images: Tensor, finding: int | Tensor) -> np.ndarray:
        return self.attribute(images, finding).detach().cpu().numpy().astype(np.float32)

    def attribute(self, images: Tensor, finding: int | Tensor) -> Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        device = model_device(self.model)
        images = images.to(device)
        idx = finding_indices(finding, images.shape[0], device)
        grad_ctx = torch.enable_grad() if self.needs_grad else torch.no_grad()
        with eval_mode(self.model), grad_ctx:
            maps = self._raw_maps(images, idx)
        if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
            raise RuntimeError(f"{type(self).__name__} produced maps of shape {tuple(maps.shape)}, expected (B, h, w)")
        return normalise_maps(upsample(maps, tuple(images.shape[-2:])))

    def _raw_maps(self, images: Tensor, idx: Tensor) -> Tensor:
        """(B, h, w) evidence for finding ``idx[b]`` in image b, at any resolution, any scale.

        Each method defines this (FusedAttribution overrides ``attribute`` instead, so the base
        is not an ABC)."""
        raise NotImplementedError(f"{type(self).__name__} must define _raw_maps or override attribute")


def attribution_method(cls: Callable[..., BaseAttribution], **kwargs: Any) -> Callable[[Any, Tensor, int], np.ndarray]:
    """Turn a method class (or factory such as ``FusedAttribution.from_model``) into the
    benchmark's interface ``fn(model, images, finding) -> maps``.

    The method object is built anew for each model, so a randomised copy of the model (the
    sanity check) is explained by the copy, with target layers resolved by name on it.
    """
    def explain(model: Any, images: Tensor, finding: int | Tensor) -> np.ndarray:
        return cls(model, **kwargs)(images, finding)

    explain.__name__ = getattr(cls, "__qualname__", type(cls).__name__)
    return explain
