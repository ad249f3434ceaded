"""Saliency benchmark: is a map in the right place, does it drive the prediction, is it stable,
and does it depend on the model at all?

This module holds the benchmark (:func:`saliency_benchmark`, its config, the aggregation over
findings); the metrics it runs live in ``eval.saliency_maps`` (they read maps only) and
``eval.saliency_probes`` (they run the model), and are re-exported here.

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

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

# The metrics live in two modules, re-exported here (this module is their public home):
from eval.saliency_maps import (as_maps, as_masks, dice_iou, energy_pointing_game, leakage,  # noqa: F401
                                masks_from_roi_bits, pointing_game, spearman_maps, ssim_maps, threshold_maps)
from eval.saliency_probes import (Method, deletion_insertion, maps_of, perturbation_robustness,  # noqa: F401
                                  randomisation_check)


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
        maps = maps_of(method, model, images, finding)
        seconds = (time.perf_counter() - start) / max(1, images.shape[0])
    else:
        maps = as_maps(maps)
    masks = as_masks(masks, maps)
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
