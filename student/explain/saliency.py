"""Saliency as the pages show it: which method made a map, one colour scale per study, muted
maps for findings not decided positive, and per-map figures where their inputs exist.

``METHODS`` maps a config name (``explain.saliency``) to a :class:`SaliencyMethod`: its page text
and a function ``(model, images (B, 1, H, W) float tensor, predict result) -> (B, 14, H, W)``
in the method's own units: ``attention`` (the class-query maps relative to uniform), ``gradcam``
and ``fused`` (``kdistill.saliency.methods``, the same maps ``kdistill eval`` scores, each
min-max normalised per finding).

``FIGURES`` maps a figure name (``explain.figures``) to a :class:`MapFigure`: a number per map,
computed when what it needs exists (an expert region of the finding, the model), else left out.
The definitions are the saliency benchmark's (``eval.saliency``), imported when a figure is
computed, so a page and the benchmark never disagree on what "energy in region" means.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

ALPHA = 0.6  # overlay opacity at the top of the scale
MUTED = 0.3  # opacity factor of the map of a finding that is not decided positive


@dataclasses.dataclass(frozen=True)
class SaliencyMethod:
    name: str
    title: str
    description: str
    units: str
    maps: Callable[[Any, Any, dict], np.ndarray]
    floor: float = 0.0  # the bottom of the colour scale: values at or below it are drawn transparent


def _attention_maps(model, images, result: dict) -> np.ndarray:
    """The student's class-query attention (``predict``'s "maps"), divided by each map's mean,
    so 1 is uniform attention and the scale is comparable across findings and studies."""
    maps = np.clip(np.asarray(result["maps"], dtype=np.float64), 0, None)
    mean = maps.mean(axis=(-2, -1), keepdims=True)
    return np.divide(maps, mean, out=np.zeros_like(maps), where=mean > 0).astype(np.float32)


def _registry_maps(name: str):
    """(model, images, result) -> (B, 14, H, W): method ``name`` of ``kdistill.saliency.methods``
    for every finding (one call per finding; each map min-max normalised, 1 = its peak)."""
    def maps(model, images, result: dict) -> np.ndarray:
        from kdistill.labels import NUM_FINDINGS
        from kdistill.saliency.methods import saliency_method

        method = saliency_method(name)
        return np.stack([np.asarray(method(model, images, j), dtype=np.float32) for j in range(NUM_FINDINGS)], axis=1)

    return maps


METHODS: dict[str, SaliencyMethod] = {
    "attention": SaliencyMethod(
        name="attention",
        title="class-query attention",
        description="Each finding has a learned query in the student's finding decoder; the map is that "
                    "query's attention over the image patches in the decoder's last layer (mean over heads), "
                    "upsampled bilinearly to the image. It shows where the query looked, which is not proof of "
                    "what drove the probability.",
        units="attention relative to uniform (1 = an average patch)",
        maps=_attention_maps,
        floor=1.0,  # at or below uniform attention nothing is drawn: the map shows where the query looks more
    ),
    "gradcam": SaliencyMethod(
        name="gradcam",
        title="Grad-CAM",
        description="Grad-CAM of the finding's logit at the student's feature map (the one its finding heads "
                    "read): the feature channels weighted by their mean gradient, ReLU, upsampled bilinearly. "
                    "It shows where a small change would move the finding's score most; it is a local "
                    "linearisation, not proof of what the model needs.",
        units="normalised per map (1 = the map's peak)",
        maps=_registry_maps("gradcam"),
    ),
    "fused": SaliencyMethod(
        name="fused",
        title="Grad-CAM x occlusion (fused)",
        description="The geometric mean of Grad-CAM and sliding-window occlusion (the drop in the finding's "
                    "probability when a patch is hidden): bright where the gradient points and hiding the "
                    "place really lowers the probability (kdistill.saliency.FusedAttribution).",
        units="normalised per map (1 = the map's peak)",
        maps=_registry_maps("fused"),
    ),
}


@dataclasses.dataclass(frozen=True)
class FigureInputs:
    saliency: np.ndarray  # (H, W) the map, in the method's units
    region: np.ndarray | None  # (H, W) bool, the finding's expert region, when known
    model: Any
    image: Any  # (1, 1, H, W) float tensor, the model's input
    finding: int
    steps: int
    # figures already computed for this map, batched over a study's maps ({name: {"value", "reference"}})
    precomputed: dict | None = None


@dataclasses.dataclass(frozen=True)
class MapFigure:
    name: str
    label: str
    help: str
    needs_region: bool
    needs_model: bool
    compute: Callable[[FigureInputs], dict[str, float]]  # {"value": v, "reference": r}


def _energy_in_region(x: FigureInputs) -> dict[str, float]:
    from eval.saliency import energy_pointing_game

    value = float(energy_pointing_game(x.saliency[None], x.region[None])[0])
    return {"value": value, "reference": float(x.region.mean())}  # reference: a uniform map's score


def _deletion_auc(x: FigureInputs) -> dict[str, float]:
    if x.precomputed and "deletion_auc" in x.precomputed:
        return x.precomputed["deletion_auc"]
    return deletion_aucs(x.model, x.image, x.saliency[None], [x.finding], x.steps)[0]


def deletion_aucs(model, image, maps: np.ndarray, findings: list[int], steps: int) -> list[dict[str, float]]:
    """Deletion AUC (and its random-order reference) of each map (k, H, W) of one image (1, 1, H, W),
    map i explaining finding ``findings[i]``: one batched pass per step for all k maps."""
    import torch

    from eval.saliency import deletion_insertion

    images = image.expand(len(findings), *image.shape[1:])
    out = deletion_insertion(model, images, maps, torch.as_tensor(findings), steps=steps, random_orders=1)
    return [{"value": float(v), "reference": float(r)} for v, r in zip(out["deletion_auc"], out["deletion_auc_random"])]


FIGURES: dict[str, MapFigure] = {
    "energy_in_region": MapFigure(
        "energy_in_region", "energy in region",
        "share of the map's mass inside the expert region of this finding; reference: the region's share of "
        "the image (what a flat map scores); higher is better", True, False, _energy_in_region),
    "deletion_auc": MapFigure(
        "deletion_auc", "deletion AUC",
        "the finding's probability as the map's most salient pixels are removed first (area under the curve); "
        "reference: the same for a random pixel order; lower than the reference is more faithful", False, True,
        _deletion_auc),
}


def map_figures(names: list[str], inputs: FigureInputs) -> list[dict[str, Any]]:
    """The figures of one map, in ``names`` order; a figure whose inputs are missing is left out."""
    out = []
    for name in names:
        figure = FIGURES[name]
        if figure.needs_region and (inputs.region is None or not inputs.region.any()):
            continue
        if figure.needs_model and inputs.model is None:
            continue
        values = figure.compute(inputs)
        if all(math.isfinite(v) for v in values.values()):
            out.append({"name": figure.name, "label": figure.label, "help": figure.help, **values})
    return out


def nice_ceiling(value: float) -> float:
    """``value`` rounded up to two significant digits (the top of a colour bar)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return round(math.ceil(value / scale - 1e-9) * scale, 12)


def overlay(gray: np.ndarray, saliency: np.ndarray, scale: tuple[float, float], muted: bool = False) -> np.ndarray:
    """Grey image in [0, 1] (H, W) + map (H, W) on the colour scale ``(low, high)`` -> RGB uint8.
    The map's colour is blended in with opacity rising with its value: at or below ``low`` the
    image is unchanged, above ``high`` the map is clipped to the top colour."""
    from matplotlib import colormaps

    low, high = scale
    norm = np.clip((np.asarray(saliency, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    heat = colormaps["inferno"](norm)[..., :3]
    alpha = (ALPHA * (MUTED if muted else 1.0) * norm)[..., None]
    rgb = np.repeat(np.asarray(gray, dtype=np.float64)[..., None], 3, axis=2)
    return np.rint(255 * ((1 - alpha) * rgb + alpha * heat)).clip(0, 255).astype(np.uint8)


def colour_scale(maps: np.ndarray, decided: np.ndarray, floor: float) -> tuple[float, float]:
    """One scale for a study's maps: from the method's floor to the highest peak among the maps
    of the findings decided positive (all maps when none is), rounded up. Other maps that peak
    higher are clipped at the top, and their captions say so."""
    peaks = np.asarray([m.max() for m in maps], dtype=np.float64)
    chosen = peaks[np.asarray(decided, dtype=bool)] if np.any(decided) else peaks
    top = nice_ceiling(float(chosen.max())) if chosen.size else floor + 1.0
    return floor, top if top > floor else floor + 1.0


def colour_bar(width: int = 256, height: int = 14) -> np.ndarray:
    """The colour scale, low (left) to high (right), as RGB uint8 (height, width)."""
    from matplotlib import colormaps

    row = colormaps["inferno"](np.linspace(0, 1, width))[:, :3]
    return np.rint(255 * np.repeat(row[None], height, axis=0)).astype(np.uint8)
