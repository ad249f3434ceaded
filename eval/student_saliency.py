"""The student's explanations scored against the expert regions of the evaluated split.

``kdistill eval`` on a checkpoint with a prepared cache whose split carries ``roi_bits`` runs
every method of ``saliency.methods`` (``kdistill.saliency.methods``: ``attention``, ``gradcam``,
``fused``) on the (study, finding) pairs where the finding is labelled positive (1) and has an
expert region, and scores the maps with the saliency benchmark (``eval.saliency``; every
definition, tie rule and chance value is written there):

* localisation on up to ``max_pairs_localisation`` pairs: pointing game, energy pointing game,
  Dice and IoU of the thresholded map (top-k, k = region area), leakage outside the region and
  onto the other findings' regions of the same image; beside pointing and energy the score of a
  uniform map (``chance_pointing``, ``chance_energy`` = the region's share of the image);
* the costly ones on the first ``max_pairs`` of those pairs: deletion and insertion AUC of the
  finding's probability with the map's pixel order and a random order (``*_auc_random``;
  ``deletion_gap`` = random - map, higher is better), noise (sigma ``noise_sigma`` on [0, 1]
  images) and shift robustness (Spearman and SSIM of the maps), and the model-randomisation
  check (Spearman rank correlation between the maps of the model and of a copy with every weight
  re-drawn: low is good; ``randomisation_pass`` the share with |rho| < 0.5).

Pairs are taken round-robin over the findings (first pair of each finding, then the second, ...
in split order), so a small budget still covers every finding that has regions. Means are over
pairs (micro); ``by_finding/<finding>/...`` gives pointing and energy per finding.

Metric names (before the split prefix): ``saliency/<method>/<metric>``, plus
``saliency/n_pairs_available`` and ``saliency/n_studies_with_regions``; a split without regions
gives ``skipped/saliency`` with the reason. ``saliency_gallery.png``: per shown pair the image
with the region's outline, then each method's map with the same outline and its energy.
"""
from __future__ import annotations

import dataclasses
import inspect
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eval.references import ReferenceSet
from eval.saliency import SaliencyBenchConfig, masks_from_roi_bits, saliency_benchmark
from kdistill.labels import FINDINGS, NUM_FINDINGS

GALLERY = "saliency_gallery.png"
# the per-sample metrics averaged over pairs, in the order summary.md shows them
LOCALISATION = ("pointing_game", "chance_pointing", "energy_pointing_game", "chance_energy", "dice", "iou",
                "leakage_outside", "leakage_other")
COSTLY = ("deletion_auc", "deletion_auc_random", "deletion_gap", "insertion_auc", "insertion_auc_random",
          "insertion_gap", "noise_spearman", "noise_ssim", "shift_spearman", "shift_ssim",
          "randomisation_spearman", "randomisation_ssim", "randomisation_pass")


@dataclasses.dataclass
class SaliencyEvalConfig:
    enabled: bool = True
    methods: list[str] = dataclasses.field(default_factory=lambda: ["attention", "gradcam", "fused"])
    # pairs for deletion/insertion, robustness and randomisation (each costs tens of forward passes)
    max_pairs: int = 16
    # pairs for the localisation metrics (one map each); None: every pair of the split
    max_pairs_localisation: int | None = 64
    steps: int = 10  # deletion/insertion steps from 0 % to 100 % of the pixels
    random_orders: int = 1  # random pixel orders for the deletion/insertion reference
    noise_sigma: float = 0.05  # H-EGL's robustness noise, on [0, 1] images
    shift_px: int = 2
    randomisation: str = "full"  # "full" or "cascading" (eval.saliency.randomisation_check)
    window: int | None = None  # fused method's occluder; None: image side / 8 (kdistill.saliency.methods)
    gallery: int = 6  # pairs shown in saliency_gallery.png (0: none)
    batch_size: int = 16

    def validate(self) -> None:
        from kdistill.saliency.methods import METHOD_NAMES

        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown:
            raise ValueError(f"unknown saliency method(s) {unknown}; available: {', '.join(METHOD_NAMES)}")
        if self.max_pairs < 0 or (self.max_pairs_localisation is not None and self.max_pairs_localisation < 1):
            raise ValueError("max_pairs must be >= 0 and max_pairs_localisation >= 1 (or null)")
        if self.steps < 1 or self.random_orders < 1 or self.batch_size < 1 or self.gallery < 0:
            raise ValueError("steps, random_orders and batch_size must be >= 1, gallery >= 0")
        if self.randomisation not in ("full", "cascading"):
            raise ValueError(f"randomisation must be 'full' or 'cascading', got {self.randomisation!r}")


def region_pairs(labels: np.ndarray, roi_bits: Any, batch: int = 256) -> tuple[list[tuple[int, int]], int]:
    """(row, finding) pairs where the finding is labelled 1 and has a region, in round-robin
    order over findings; and the number of studies with any region. ``roi_bits`` is
    ``rows -> (n, S, S)`` or an array."""
    n = len(labels)
    has = np.zeros((n, NUM_FINDINGS), dtype=bool)
    for start in range(0, n, batch):
        rows = list(range(start, min(n, start + batch)))
        bits = np.asarray(roi_bits(rows) if callable(roi_bits) else roi_bits[rows]).astype(np.int64)
        union = np.bitwise_or.reduce(bits.reshape(len(rows), -1), axis=1)
        has[rows] = ((union[:, None] >> np.arange(NUM_FINDINGS)[None]) & 1).astype(bool)
    positive = np.asarray(labels) == 1
    by_finding = [[int(r) for r in np.flatnonzero(positive[:, j] & has[:, j])] for j in range(NUM_FINDINGS)]
    pairs, k = [], 0
    while any(k < len(rows) for rows in by_finding):
        pairs += [(rows[k], j) for j, rows in enumerate(by_finding) if k < len(rows)]
        k += 1
    return pairs, int(has.any(axis=1).sum())


def _model_inputs(ref: ReferenceSet, rows: Sequence[int], size: tuple[int, int], batch: int):
    """Images (n, 1, H, W) float tensor at the model's size and roi_bits (n, H, W) at that size."""
    import torch
    import torch.nn.functional as F

    images = np.concatenate(list(ref.image_batches(list(rows), batch, size)))
    bits = np.asarray(ref.roi_bits(list(rows))).astype(np.int64)
    if bits.shape[-2:] != tuple(size):  # nearest: a pixel keeps exactly the bits of the pixel it came from
        t = torch.as_tensor(bits.astype(np.float64))[:, None]
        bits = F.interpolate(t, size=tuple(size), mode="nearest")[:, 0].numpy().astype(np.int64)
    return torch.as_tensor(images, dtype=torch.float32)[:, None], bits


def _method_maps(method, model, images, findings: np.ndarray, batch: int) -> np.ndarray:
    """Maps (n, H, W) of image i for finding ``findings[i]``, ``batch`` images per call."""
    import torch

    return np.concatenate([np.asarray(method(model, images[s:s + batch], torch.as_tensor(findings[s:s + batch])),
                                      dtype=np.float64) for s in range(0, len(images), batch)])


def _method_metrics(prefix: str, per: dict[str, np.ndarray], found: np.ndarray, n_costly: int,
                    seconds: float) -> dict[str, float]:
    """One method's summary: each metric's mean over the pairs, the pair counts, the time per map
    and the localisation metrics per finding (``found``: the finding of each pair)."""
    out: dict[str, float] = {}
    for metric, values in per.items():
        out[f"{prefix}/{metric}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    out[f"{prefix}/n_pairs"] = float(len(found))
    out[f"{prefix}/n_pairs_costly"] = float(n_costly)
    out[f"{prefix}/seconds_per_map"] = seconds / max(1, len(found))
    for j in sorted(set(found.tolist())):
        rows_j = found == j
        for metric in ("pointing_game", "chance_pointing", "energy_pointing_game", "chance_energy"):
            out[f"{prefix}/by_finding/{FINDINGS[j]}/{metric}"] = float(np.nanmean(per[metric][rows_j]))
        out[f"{prefix}/by_finding/{FINDINGS[j]}/n_pairs"] = float(rows_j.sum())
    return out


def score_student_saliency(model: Any, ref: ReferenceSet, cfg: SaliencyEvalConfig, seed: int = 0,
                           out_dir: Path | None = None) -> tuple[dict[str, float | str], list[str]]:
    """Saliency metrics (unprefixed names, ``saliency/...``) and notes for the summary; writes the
    gallery into ``out_dir`` when given. ``model``: the model, or a function returning it (called
    only when there is something to score)."""
    from kdistill.saliency.methods import saliency_method

    if not cfg.enabled or not cfg.methods:
        return {"skipped/saliency": "saliency.enabled is false (or no saliency.methods)"}, []
    if ref.roi_bits is None:
        return {"skipped/saliency": "the split carries no expert regions: saliency is scored from a prepared "
                                    "cache (--prepared) whose studies have regions (roi_bits)"}, []
    pairs, n_with = region_pairs(ref.labels, ref.roi_bits)
    out: dict[str, float | str] = {"saliency/n_pairs_available": float(len(pairs)),
                                   "saliency/n_studies_with_regions": float(n_with)}
    if not pairs:
        out["skipped/saliency"] = "no study of the split has a labelled-positive finding with an expert region"
        return out, []
    chosen = pairs[:cfg.max_pairs_localisation] if cfg.max_pairs_localisation else pairs
    costly = range(min(cfg.max_pairs, len(chosen)))
    rows = sorted({r for r, _ in chosen})
    import torch

    if inspect.isfunction(model) or inspect.ismethod(model):
        model = model()  # a loader: the checkpoint is read only when there are pairs to score
    size = tuple(int(v) for v in getattr(model, "image_size", (0, 0)))
    images, bits = _model_inputs(ref, rows, size, cfg.batch_size)
    where = {r: i for i, r in enumerate(rows)}
    bench_local = SaliencyBenchConfig(faithfulness=False, robustness=False, sanity=False, seed=seed)
    bench_costly = SaliencyBenchConfig(steps=cfg.steps, random_orders=cfg.random_orders, noise_sigma=cfg.noise_sigma,
                                       shift_px=cfg.shift_px, randomisation=cfg.randomisation, seed=seed,
                                       batch_size=max(cfg.batch_size, 64))
    # every pair in one batch, each image with its own finding (the methods, the perturbation curves
    # and the randomisation check take one finding index per image)
    at = [where[r] for r, _ in chosen]
    found = np.asarray([f for _, f in chosen])
    x = images[at]
    one = np.int64(1) << found[:, None, None]
    target = (bits[at] & one) > 0
    other = (bits[at] & ~one) > 0
    sub = sorted(costly)
    gallery_maps: dict[str, list[np.ndarray]] = {}
    for name in cfg.methods:
        method = saliency_method(name, window=cfg.window)
        start = time.perf_counter()
        maps = _method_maps(method, model, x, found, cfg.batch_size)
        seconds = time.perf_counter() - start
        local = saliency_benchmark(model, x, target, found, method, other_masks=other, config=bench_local, maps=maps)
        per = {m: local[f"{m}_per_sample"] for m in LOCALISATION if f"{m}_per_sample" in local}
        if sub:
            deep = saliency_benchmark(model, x[sub], target[sub], torch.as_tensor(found[sub]), method,
                                      other_masks=other[sub], config=bench_costly, maps=maps[sub])
            per.update({m: deep[f"{m}_per_sample"] for m in COSTLY if f"{m}_per_sample" in deep})
        gallery_maps[name] = list(maps[:cfg.gallery])
        out.update(_method_metrics(f"saliency/{name}", per, found, len(sub), seconds))
    notes = [f"Saliency: {len(chosen)} (study, finding) pairs with a labelled-positive finding and an expert region "
             f"(of {len(pairs)} in the split; {n_with} studies have regions) for localisation; the first "
             f"{len(costly)} of them for deletion/insertion ({cfg.steps} steps, baseline 0 = black), noise "
             f"(sigma {cfg.noise_sigma:g}) and shift ({cfg.shift_px} px) robustness and the model-randomisation check. "
             "Chance = the score of a uniform map (the region's share of the image)."]
    if out_dir is not None and cfg.gallery and gallery_maps:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shown = list(range(min(cfg.gallery, len(chosen))))
        plot_gallery([images[where[chosen[k][0]], 0].numpy() for k in shown],
                     [masks_from_roi_bits(bits[where[chosen[k][0]]][None], chosen[k][1])[0][0] for k in shown],
                     [FINDINGS[chosen[k][1]] for k in shown], [ref.study_ids[chosen[k][0]] for k in shown],
                     {name: maps_k[:len(shown)] for name, maps_k in gallery_maps.items()},
                     Path(out_dir) / GALLERY)
        notes.append(f"{GALLERY}: per pair the image with the expert region outlined, then each method's map "
                     "(same outline; the number is its energy in the region).")
    return out, notes


def plot_gallery(images: Sequence[np.ndarray], regions: Sequence[np.ndarray], findings: Sequence[str],
                 study_ids: Sequence[str], maps: dict[str, Sequence[np.ndarray]], path: Path) -> Path:
    """Rows: pairs; columns: the image with the region's outline, then each method's map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.saliency import energy_pointing_game
    from kdistill.io import atomic_path
    from kdistill.saliency.methods import TITLES

    names = list(maps)
    rows, cols = len(images), 1 + len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for r in range(rows):
        region = np.asarray(regions[r], dtype=float)
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[r], cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_title(f"{findings[r]}\nstudy {study_ids[r]}", fontsize=7)
            else:
                m = np.asarray(maps[names[c - 1]][r])
                ax.imshow(m, cmap="inferno", alpha=0.55, vmin=0, vmax=max(float(m.max()), 1e-9))
                energy = float(energy_pointing_game(m[None], region[None].astype(bool))[0])
                ax.set_title(f"{TITLES.get(names[c - 1], names[c - 1])}\nenergy {energy:.2f} "
                             f"(chance {region.mean():.2f})", fontsize=7)
            if region.any():
                ax.contour(region, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


__all__ = ["GALLERY", "SaliencyEvalConfig", "plot_gallery", "region_pairs", "score_student_saliency"]
