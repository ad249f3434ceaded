"""Saliency benchmark: is a map in the right place, does it drive the prediction, is it stable,
and does it depend on the model at all?

After "Toward Faithful Segmentation Attribution via Benchmarking and Dual-Evidence Fusion"
(arXiv 2603.22624): attribution judged by measurement, not looks. Definitions follow Quantus
where it has the metric; every choice that Quantus leaves open is written down here.

Localisation (maps (B, H, W) against the target finding's expert mask (B, H, W)):

* ``pointing_game``: hit if the map's maximum lies in the region, or within ``tolerance``
  pixels of it (Zhang et al. 2018 used 15 px at 224 px). Ties: Quantus counts a hit if ANY
  maximal pixel is inside, so a flat map always "hits"; we score the share of maximal pixels
  that hit, i.e. the expected hit under random tie-breaking, so a flat map scores chance
  (the share of the image covered by the region) and cannot game the metric.
* ``energy_pointing_game``: share of the (non-negative) attribution mass inside the region
  (Wang et al. 2020, Score-CAM; Quantus ``AttributionLocalisation``). Chance = region share.
* ``dice_iou``: the map thresholded, against the region. ``threshold="match"`` (default)
  keeps the top-k pixels, k = the region's area (ties broken at random, seeded), so the
  score does not depend on the map's calibration and chance Dice = region share. A number t
  in (0, 1] keeps pixels with map >= t * max(map) instead.
* ``leakage``: mass outside the target region (= 1 - energy), and mass on OTHER findings'
  regions that are not also the target's (union of other masks minus target mask), NaN
  where an image has no other region.

A map with no mass at all (all zeros) carries no preference and is scored as a flat map.
An image with an empty target mask gets NaN in the localisation metrics (as in Quantus) and
is left out of the means; ``n_scored`` counts the images that were scored.

Faithfulness (``deletion_insertion``; Petsiuk et al. 2018 RISE; Quantus' region
perturbation / selectivity do the same with patches): pixels are removed (deletion: set to
the baseline) or revealed (insertion: start from the baseline, put the image's pixels back)
in decreasing attribution order, ``steps`` equal steps from 0 % to 100 %; the curve is the
finding's probability sigmoid(logit) after each step and the AUC its trapezoid area over
[0, 1]. The same curve for a random pixel order gives the baseline: ``deletion_gap`` =
random - attributed (higher is better), ``insertion_gap`` = attributed - random. Ties in the
map (a binary mask used as a map) are ordered at random, not in raster order. ``baseline``:
0.0 by default (the input-space zero, i.e. the dataset mean for mean/std-normalised inputs),
"mean" (each image's per-channel mean) or "blur" (Gaussian, sigma = side / 16, as RISE's
insertion start).

Robustness (``perturbation_robustness``): Spearman rank correlation and SSIM between the map
of an image and the map of the image (a) plus Gaussian noise of std ``noise_sigma`` (input
units; H-EGL uses 0.05 on [0, 1] images), (b) shifted by ``shift_px`` pixels down and right
(edge-replicated), with the map shifted back and both cropped to the common part.

Sanity (``randomisation_check``, Adebayo et al. 2018; Quantus
``ModelParameterRandomisation``): the weights of a copy of the model are re-drawn (all at
once, or cascading from the output layer down) and the maps recomputed; the Spearman
correlation with the original maps must be LOW. A method that ignores the model (an edge
detector) keeps correlation 1 and fails. Pass: |rho| < ``sanity_threshold``.

Rank correlation of constant maps: two constant maps -> 1 (they agree: no information), one
constant map -> 0 (no rank agreement is possible).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from torch import Tensor

from kdistill.saliency.base import finding_probability, model_device

#: the benchmark's method interface: (model, images (B, C, H, W), finding index) -> maps (B, H, W)
Method = Callable[[Any, Tensor, int], "np.ndarray | Tensor"]


@dataclasses.dataclass
class SaliencyBenchConfig:
    pointing_tolerance: float = 0.0  # pixels around the region that still count as a hit
    threshold: str | float = "match"  # "match" (top-k, k = region area) or t in (0, 1] of the map's max
    steps: int = 20  # deletion/insertion steps from 0 % to 100 % of the pixels
    baseline: str | float = 0.0  # removed pixels become: a number, "mean" (per image/channel) or "blur"
    random_orders: int = 3  # random pixel orders averaged for the deletion/insertion baseline
    noise_sigma: float = 0.05  # Gaussian noise std for robustness, in input units
    shift_px: int = 2  # shift for robustness, pixels
    randomisation: str = "full"  # "full" or "cascading" (top-down, layer by layer)
    sanity_threshold: float = 0.5  # randomisation passes where |spearman| < this
    faithfulness: bool = True
    robustness: bool = True
    sanity: bool = True
    seed: int = 0
    batch_size: int = 256  # images per forward pass in the perturbation curves

    def validate(self) -> None:
        if not (self.threshold == "match" or (isinstance(self.threshold, (int, float))
                                              and 0 < float(self.threshold) <= 1)):
            raise ValueError(f"threshold must be 'match' or a number in (0, 1], got {self.threshold!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if isinstance(self.baseline, str) and self.baseline not in ("mean", "blur"):
            raise ValueError(f"baseline must be a number, 'mean' or 'blur', got {self.baseline!r}")
        if self.randomisation not in ("full", "cascading"):
            raise ValueError(f"randomisation must be 'full' or 'cascading', got {self.randomisation!r}")
        if self.pointing_tolerance < 0 or self.shift_px < 0 or self.noise_sigma < 0 or self.random_orders < 1:
            raise ValueError("pointing_tolerance, shift_px and noise_sigma must be >= 0, random_orders >= 1")


# ----------------------------------------------------------------------------- inputs

def _as_maps(maps: Any, name: str = "maps") -> np.ndarray:
    if isinstance(maps, Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"{name} must be (B, H, W), got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return maps


def _as_masks(masks: Any, like: np.ndarray, name: str = "masks") -> np.ndarray:
    if isinstance(masks, Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks).astype(bool)
    if masks.shape != like.shape:
        raise ValueError(f"{name} have shape {masks.shape}, maps have {like.shape}")
    return masks


def _mass(a: np.ndarray) -> np.ndarray:
    """Non-negative attribution mass; a map without mass is flat (no preference)."""
    a = np.clip(a, 0, None)
    return a if a.sum() > 0 else np.ones_like(a)


def masks_from_roi_bits(roi_bits: Any, finding: int) -> tuple[np.ndarray, np.ndarray]:
    """From the prepared cache's ``roi_bits`` (B, S, S) uint16: (target mask, union of other findings' masks)."""
    bits = np.asarray(roi_bits).astype(np.int64)
    target = (bits >> finding) & 1
    other = bits & ~(1 << finding)
    return target.astype(bool), other.astype(bool)


# ----------------------------------------------------------------------------- localisation

def pointing_game(maps: Any, masks: Any, tolerance: float = 0.0) -> np.ndarray:
    """Per image: share of the map's maximal pixels that lie within ``tolerance`` px of the region."""
    maps = _as_maps(maps)
    masks = _as_masks(masks, maps)
    out = np.full(len(maps), np.nan)
    for b, (a, m) in enumerate(zip(maps, masks)):
        if not m.any():
            continue
        region = m if tolerance <= 0 else ndimage.distance_transform_edt(~m) <= tolerance
        top = a >= a.max()
        out[b] = (top & region).sum() / top.sum()
    return out


def energy_pointing_game(maps: Any, masks: Any) -> np.ndarray:
    """Per image: share of non-negative attribution mass inside the region."""
    maps = _as_maps(maps)
    masks = _as_masks(masks, maps)
    out = np.full(len(maps), np.nan)
    for b, (a, m) in enumerate(zip(maps, masks)):
        if m.any():
            a = _mass(a)
            out[b] = a[m].sum() / a.sum()
    return out


def threshold_maps(maps: Any, masks: Any, threshold: str | float = "match", seed: int = 0) -> np.ndarray:
    """Binary maps (B, H, W): top-k pixels (k = region area) for "match", else map >= t * max(map)."""
    maps = _as_maps(maps)
    masks = _as_masks(masks, maps)
    rng = np.random.default_rng(seed)
    out = np.zeros(maps.shape, dtype=bool)
    for b, (a, m) in enumerate(zip(maps, masks)):
        if threshold == "match":
            k = int(m.sum())
            order = _descending_order(a, rng)
            out[b].reshape(-1)[order[:k]] = True
        else:
            peak = a.max()
            out[b] = (a >= float(threshold) * peak) if peak > 0 else False
    return out


def dice_iou(maps: Any, masks: Any, threshold: str | float = "match", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per image Dice and IoU of the thresholded map against the region (NaN for an empty region)."""
    maps = _as_maps(maps)
    masks = _as_masks(masks, maps)
    pred = threshold_maps(maps, masks, threshold, seed)
    dice = np.full(len(maps), np.nan)
    iou = np.full(len(maps), np.nan)
    for b, (p, m) in enumerate(zip(pred, masks)):
        if not m.any():
            continue
        inter = (p & m).sum()
        dice[b] = 2 * inter / (p.sum() + m.sum())
        iou[b] = inter / (p | m).sum()
    return dice, iou


def leakage(maps: Any, masks: Any, other_masks: Any = None) -> dict[str, np.ndarray]:
    """Per image: ``outside`` = mass outside the target region; ``other`` = mass on other findings'
    regions minus the target region (NaN where there is none)."""
    maps = _as_maps(maps)
    masks = _as_masks(masks, maps)
    outside = 1.0 - energy_pointing_game(maps, masks)
    other = np.full(len(maps), np.nan)
    if other_masks is not None:
        others = _as_masks(other_masks, maps, "other_masks") & ~masks
        for b, (a, o, m) in enumerate(zip(maps, others, masks)):
            if o.any() and m.any():
                a = _mass(a)
                other[b] = a[o].sum() / a.sum()
    return {"outside": outside, "other": other}


# ----------------------------------------------------------------------------- faithfulness

def _descending_order(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices by decreasing value, ties in random order (raster order would bias)."""
    flat = a.reshape(-1)
    return np.lexsort((rng.random(flat.size), -flat))


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
    maps = _as_maps(maps)
    images = images.to(model_device(model))
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps have shape {maps.shape}, images {tuple(images.shape)}")
    rng = np.random.default_rng(seed)
    base = _baseline(images, baseline)
    attributed = np.stack([_descending_order(a, rng) for a in maps])
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


# ----------------------------------------------------------------------------- similarity

def spearman_maps(a: Any, b: Any) -> np.ndarray:
    """Per image Spearman rank correlation of two map batches (constant maps: see module doc)."""
    a, b = _as_maps(a, "a"), _as_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"map batches differ in shape: {a.shape} vs {b.shape}")
    out = np.zeros(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0
        if flat_x or flat_y:
            out[i] = 1.0 if (flat_x and flat_y) else 0.0
        else:
            out[i] = stats.spearmanr(x.ravel(), y.ravel()).statistic
    return out


def ssim_maps(a: Any, b: Any, win_size: int = 7, data_range: float = 1.0) -> np.ndarray:
    """Per image SSIM (Wang et al. 2004) with skimage's defaults: uniform ``win_size`` window,
    sample covariance, K1 = 0.01, K2 = 0.03, mean over windows that lie inside the image."""
    a, b = _as_maps(a, "a"), _as_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"map batches differ in shape: {a.shape} vs {b.shape}")
    win = min(win_size, *a.shape[1:])
    win -= 1 - win % 2  # odd, so the window has a centre
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cov_norm = win * win / (win * win - 1) if win > 1 else 1.0
    pad = (win - 1) // 2
    out = np.zeros(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        mx, my = (ndimage.uniform_filter(v, win, mode="reflect") for v in (x, y))
        vx = cov_norm * (ndimage.uniform_filter(x * x, win, mode="reflect") - mx * mx)
        vy = cov_norm * (ndimage.uniform_filter(y * y, win, mode="reflect") - my * my)
        vxy = cov_norm * (ndimage.uniform_filter(x * y, win, mode="reflect") - mx * my)
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out[i] = s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean()
    return out


# ----------------------------------------------------------------------------- robustness, sanity

def _shift(images: Tensor, px: int) -> Tensor:
    """Shift content ``px`` pixels down and right, replicating the top/left edge."""
    if px == 0:
        return images
    padded = F.pad(images, (px, 0, px, 0), mode="replicate")
    return padded[..., :images.shape[-2], :images.shape[-1]]


def _maps(method: Method, model: Any, images: Tensor, finding: int) -> np.ndarray:
    return _as_maps(method(model, images, finding), f"maps from {getattr(method, '__name__', 'method')}")


def perturbation_robustness(model: Any, images: Tensor, finding: int, method: Method, maps: Any = None,
                            noise_sigma: float = 0.05, shift_px: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Per image Spearman and SSIM between the maps of clean and perturbed images."""
    images = images.to(model_device(model))
    clean = _maps(method, model, images, finding) if maps is None else _as_maps(maps)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen).to(images.device, images.dtype) * noise_sigma
    noisy = _maps(method, model, images + noise, finding)
    out = {"noise_spearman": spearman_maps(clean, noisy), "noise_ssim": ssim_maps(clean, noisy)}
    if shift_px > 0:
        moved = _maps(method, model, _shift(images, shift_px), finding)
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
    original = _maps(method, model, images, finding) if maps is None else _as_maps(maps)
    randomised = copy.deepcopy(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layers = _parameterised_layers(randomised)
    if not layers:
        raise ValueError("the model has no parameters to randomise")
    by_layer = []
    for name, layer in layers:
        _randomise_(layer, gen)
        if mode == "cascading":
            by_layer.append((name, float(np.mean(spearman_maps(original, _maps(method, randomised, images, finding))))))
    final = _maps(method, randomised, images, finding)
    out: dict[str, Any] = {"spearman": spearman_maps(original, final), "ssim": ssim_maps(original, final)}
    if mode == "cascading":
        out["by_layer"] = by_layer
    return out


# ----------------------------------------------------------------------------- the benchmark

def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def saliency_benchmark(model: Any, images: Tensor, masks: Any, finding: int, method: Method,
                       other_masks: Any = None, config: SaliencyBenchConfig | None = None,
                       maps: Any = None) -> dict[str, Any]:
    """Every metric for one finding on one batch, as a flat dict.

    ``masks``: boolean (B, H, W), the target finding's expert region per image;
    ``other_masks``: optional (B, H, W) union of the other findings' regions; ``maps``: the
    method's maps if already computed. Each metric ``name`` is the mean over the batch
    (NaN-aware) and ``name_per_sample`` the per-image array; ``chance_pointing`` and
    ``chance_energy`` give the scores a flat map would get, to read the others against;
    ``method_seconds_per_image`` the wall time of the method's maps (NaN when ``maps`` given);
    with cascading randomisation, ``randomisation_spearman_after/<k>_<layer>`` the mean Spearman
    after the k-th layer (from the output) was randomised.
    """
    cfg = config or SaliencyBenchConfig()
    cfg.validate()
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    seconds = float("nan")
    if maps is None:
        start = time.perf_counter()
        maps = _maps(method, model, images, finding)
        seconds = (time.perf_counter() - start) / max(1, images.shape[0])
    else:
        maps = _as_maps(maps)
    masks = _as_masks(masks, maps)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps have shape {maps.shape}, images {tuple(images.shape)}")

    per: dict[str, np.ndarray] = {}
    flat = np.zeros_like(maps)
    per["pointing_game"] = pointing_game(maps, masks, cfg.pointing_tolerance)
    per["chance_pointing"] = pointing_game(flat, masks, cfg.pointing_tolerance)
    per["energy_pointing_game"] = energy_pointing_game(maps, masks)
    per["chance_energy"] = energy_pointing_game(flat, masks)
    per["dice"], per["iou"] = dice_iou(maps, masks, cfg.threshold, cfg.seed)
    leak = leakage(maps, masks, other_masks)
    per["leakage_outside"] = leak["outside"]
    if other_masks is not None:
        per["leakage_other"] = leak["other"]
    if cfg.faithfulness:
        faith = deletion_insertion(model, images, maps, finding, cfg.steps, cfg.baseline, cfg.random_orders,
                                   cfg.seed, cfg.batch_size)
        per.update({k: v for k, v in faith.items() if not k.endswith("_curve")})
    if cfg.robustness:
        per.update(perturbation_robustness(model, images, finding, method, maps, cfg.noise_sigma, cfg.shift_px,
                                           cfg.seed))
    result: dict[str, Any] = {"n_samples": int(len(maps)), "n_scored": int(masks.reshape(len(masks), -1).any(1).sum()),
                              "method_seconds_per_image": seconds}
    if cfg.sanity:
        sanity = randomisation_check(model, images, finding, method, maps, cfg.randomisation, cfg.seed)
        per["randomisation_spearman"] = sanity["spearman"]
        per["randomisation_ssim"] = sanity["ssim"]
        per["randomisation_pass"] = (np.abs(sanity["spearman"]) < cfg.sanity_threshold).astype(np.float64)
        for i, (layer, rho) in enumerate(sanity.get("by_layer", [])):
            result[f"randomisation_spearman_after/{i:02d}_{layer}"] = rho
    for name, values in per.items():
        result[name] = _mean(values)
        result[f"{name}_per_sample"] = values
    return result


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The plain numbers of a benchmark result (what goes into metrics.json)."""
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float, np.floating, np.integer))}


def aggregate_over_findings(per_finding: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Flatten ``{finding name: saliency_benchmark(...) result}`` into ``"<finding>/<metric>"`` keys,
    plus ``"mean/<metric>"``: the unweighted (macro) mean over the findings that have it, and
    ``"n_findings"``. Counts (``n_samples``, ``n_scored``) are summed, not averaged."""
    out: dict[str, float] = {}
    collected: dict[str, list[float]] = {}
    for finding, result in per_finding.items():
        for name, value in scalar_metrics(result).items():
            out[f"{finding}/{name}"] = value
            collected.setdefault(name, []).append(value)
    for name, values in collected.items():
        if name in ("n_samples", "n_scored", "n_findings"):
            out[f"total/{name}"] = float(np.sum(values))
        else:
            out[f"mean/{name}"] = _mean(np.asarray(values))
    out["n_findings"] = float(len(per_finding))
    return out


__all__ = ["Method", "SaliencyBenchConfig", "aggregate_over_findings", "deletion_insertion", "dice_iou",
           "energy_pointing_game", "leakage", "masks_from_roi_bits", "perturbation_robustness", "pointing_game",
           "randomisation_check", "saliency_benchmark", "scalar_metrics", "spearman_maps", "ssim_maps",
           "threshold_maps"]
