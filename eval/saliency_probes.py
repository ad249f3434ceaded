"""The saliency benchmark's metrics that run the model: faithfulness (deletion/insertion against
random pixel orders), robustness to noise and shifts, and the randomisation sanity check.
Definitions: ``eval.saliency``'s docstring."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eval.saliency_maps import as_maps, descending_order, spearman_maps, ssim_maps
from kdistill.saliency.base import finding_probability, model_device

#: the benchmark's method interface: (model, images (B, C, H, W), finding index) -> maps (B, H, W)
Method = Callable[[Any, Tensor, int], "np.ndarray | Tensor"]


# ----------------------------------------------------------------------------- faithfulness

def _blur(images: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _baseline(images: Tensor, baseline: str | float) -> Tensor:
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        return _blur(images, sigma=max(images.shape[-2:]) / 16)
    return torch.full_like(images, float(baseline))


def _perturbation_curves(model: Any, images: Tensor, finding: int, orders: np.ndarray, steps: int,
                         baseline: Tensor, insertion: bool, batch_size: int) -> np.ndarray:
    """(B, steps + 1) probabilities after removing (or revealing) the first n_s pixels of each order."""
    b, _, h, w = images.shape
    ranks = np.empty_like(orders)
    np.put_along_axis(ranks, orders, np.arange(h * w)[None].repeat(b, 0), axis=1)
    ranks = torch.as_tensor(ranks, device=images.device).view(b, 1, h, w)
    counts = [round(s * h * w / steps) for s in range(steps + 1)]
    curves = np.zeros((b, steps + 1))
    for s, n in enumerate(counts):
        changed = ranks < n
        x = torch.where(changed, images, baseline) if insertion else torch.where(changed, baseline, images)
        curves[:, s] = finding_probability(model, x, finding, batch_size).cpu().numpy()
    return curves


def _auc(curves: np.ndarray) -> np.ndarray:
    steps = curves.shape[1] - 1
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2 * steps)


def deletion_insertion(model: Any, images: Tensor, maps: Any, finding: int, steps: int = 20,
                       baseline: str | float = 0.0, random_orders: int = 3, seed: int = 0,
                       batch_size: int = 256) -> dict[str, np.ndarray]:
    """Deletion/insertion AUCs per image for the map's pixel order and for random orders."""
    maps = as_maps(maps)
    images = images.to(model_device(model))
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps have shape {maps.shape}, images {tuple(images.shape)}")
    rng = np.random.default_rng(seed)
    base = _baseline(images, baseline)
    attributed = np.stack([descending_order(a, rng) for a in maps])
    out: dict[str, np.ndarray] = {}
    for kind, insertion in (("deletion", False), ("insertion", True)):
        curve = _perturbation_curves(model, images, finding, attributed, steps, base, insertion, batch_size)
        random_auc = np.zeros(len(maps))
        for _ in range(random_orders):
            orders = np.stack([rng.permutation(maps[0].size) for _ in maps])
            random_auc += _auc(_perturbation_curves(model, images, finding, orders, steps, base, insertion,
                                                    batch_size)) / random_orders
        out[f"{kind}_auc"] = _auc(curve)
        out[f"{kind}_auc_random"] = random_auc
        out[f"{kind}_curve"] = curve
    out["deletion_gap"] = out["deletion_auc_random"] - out["deletion_auc"]
    out["insertion_gap"] = out["insertion_auc"] - out["insertion_auc_random"]
    return out


# ----------------------------------------------------------------------------- robustness, sanity

def _shift(images: Tensor, px: int) -> Tensor:
    """Shift content ``px`` pixels down and right, replicating the top/left edge."""
    if px == 0:
        return images
    padded = F.pad(images, (px, 0, px, 0), mode="replicate")
    return padded[..., :images.shape[-2], :images.shape[-1]]


def maps_of(method: Method, model: Any, images: Tensor, finding: int) -> np.ndarray:
    """The method's maps for these images, checked (:func:`eval.saliency_maps.as_maps`)."""
    return as_maps(method(model, images, finding), f"maps from {getattr(method, '__name__', 'method')}")


def perturbation_robustness(model: Any, images: Tensor, finding: int, method: Method, maps: Any = None,
                            noise_sigma: float = 0.05, shift_px: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Per image Spearman and SSIM between the maps of clean and perturbed images."""
    images = images.to(model_device(model))
    clean = maps_of(method, model, images, finding) if maps is None else as_maps(maps)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen).to(images.device, images.dtype) * noise_sigma
    noisy = maps_of(method, model, images + noise, finding)
    out = {"noise_spearman": spearman_maps(clean, noisy), "noise_ssim": ssim_maps(clean, noisy)}
    if shift_px > 0:
        moved = maps_of(method, model, _shift(images, shift_px), finding)
        back, ref = moved[:, shift_px:, shift_px:], clean[:, :-shift_px, :-shift_px]
        out["shift_spearman"] = spearman_maps(ref, back)
        out["shift_ssim"] = ssim_maps(ref, back)
    return out


def _parameterised_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules owning parameters directly, output side first (reverse registration order)."""
    layers = [(name or "<root>", m) for name, m in model.named_modules()
              if next(m.parameters(recurse=False), None) is not None]
    return layers[::-1]


@torch.no_grad()
def _randomise_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw a module's own parameters from N(0, s^2), s = their spread (or scale, or 0.02)."""
    for p in module.parameters(recurse=False):
        data = p.detach().float()
        scale = float(data.std()) if data.numel() > 1 else 0.0
        scale = scale or float(data.abs().mean()) or 0.02
        p.copy_((torch.randn(p.shape, generator=gen) * scale).to(p.device, p.dtype))


def randomisation_check(model: torch.nn.Module, images: Tensor, finding: int, method: Method, maps: Any = None,
                        mode: str = "full", seed: int = 0) -> dict[str, Any]:
    """Maps of a randomised copy of the model vs the original maps (the model itself is untouched).

    Returns per image ``spearman`` and ``ssim`` for the fully randomised model; with
    ``mode="cascading"`` also ``by_layer``: [(layer name, mean spearman)] after randomising
    each layer in turn, from the output down.
    """
    if mode not in ("full", "cascading"):
        raise ValueError(f"mode must be 'full' or 'cascading', got {mode!r}")
    images = images.to(model_device(model))
    original = maps_of(method, model, images, finding) if maps is None else as_maps(maps)
    randomised = copy.deepcopy(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layers = _parameterised_layers(randomised)
    if not layers:
        raise ValueError("the model has no parameters to randomise")
    by_layer = []
    for name, layer in layers:
        _randomise_(layer, gen)
        if mode == "cascading":
            by_layer.append((name, float(np.mean(spearman_maps(original, maps_of(method, randomised, images, finding))))))
    final = maps_of(method, randomised, images, finding)
    out: dict[str, Any] = {"spearman": spearman_maps(original, final), "ssim": ssim_maps(original, final)}
    if mode == "cascading":
        out["by_layer"] = by_layer
    return out
