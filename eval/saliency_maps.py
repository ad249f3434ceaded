"""The saliency benchmark's metrics that read maps only (no model): the map and mask checks, the
localisation metrics against an expert region (pointing game, energy, Dice/IoU, leakage) and the
map-to-map similarities (Spearman, SSIM). Definitions and tie rules: ``eval.saliency``'s docstring."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage, stats
from torch import Tensor


# ----------------------------------------------------------------------------- inputs

def as_maps(maps: Any, name: str = "maps") -> np.ndarray:
    """``maps`` as a finite float64 (B, H, W) array (a tensor is detached and moved to the CPU)."""
    if isinstance(maps, Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"{name} must be (B, H, W), got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return maps


def as_masks(masks: Any, like: np.ndarray, name: str = "masks") -> np.ndarray:
    """``masks`` as a boolean array of the maps' shape."""
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


def descending_order(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices by decreasing value, ties in random order (raster order would bias)."""
    flat = a.reshape(-1)
    return np.lexsort((rng.random(flat.size), -flat))


# ----------------------------------------------------------------------------- localisation

def pointing_game(maps: Any, masks: Any, tolerance: float = 0.0) -> np.ndarray:
    """Per image: share of the map's maximal pixels that lie within ``tolerance`` px of the region."""
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
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
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
    out = np.full(len(maps), np.nan)
    for b, (a, m) in enumerate(zip(maps, masks)):
        if m.any():
            a = _mass(a)
            out[b] = a[m].sum() / a.sum()
    return out


def threshold_maps(maps: Any, masks: Any, threshold: str | float = "match", seed: int = 0) -> np.ndarray:
    """Binary maps (B, H, W): top-k pixels (k = region area) for "match", else map >= t * max(map)."""
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
    rng = np.random.default_rng(seed)
    out = np.zeros(maps.shape, dtype=bool)
    for b, (a, m) in enumerate(zip(maps, masks)):
        if threshold == "match":
            k = int(m.sum())
            order = descending_order(a, rng)
            out[b].reshape(-1)[order[:k]] = True
        else:
            peak = a.max()
            out[b] = (a >= float(threshold) * peak) if peak > 0 else False
    return out


def dice_iou(maps: Any, masks: Any, threshold: str | float = "match", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per image Dice and IoU of the thresholded map against the region (NaN for an empty region)."""
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
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
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
    outside = 1.0 - energy_pointing_game(maps, masks)
    other = np.full(len(maps), np.nan)
    if other_masks is not None:
        others = as_masks(other_masks, maps, "other_masks") & ~masks
        for b, (a, o, m) in enumerate(zip(maps, others, masks)):
            if o.any() and m.any():
                a = _mass(a)
                other[b] = a[o].sum() / a.sum()
    return {"outside": outside, "other": other}


# ----------------------------------------------------------------------------- similarity

def spearman_maps(a: Any, b: Any) -> np.ndarray:
    """Per image Spearman rank correlation of two map batches (constant maps: see module doc)."""
    a, b = as_maps(a, "a"), as_maps(b, "b")
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
    a, b = as_maps(a, "a"), as_maps(b, "b")
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
