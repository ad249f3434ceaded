"""One study's explained record: per finding the probability, threshold, decision, reference
label and agreement, and the overlay of its map (written as PNGs into the study's folder); the
texts as generated and as shown. The pages and ``explanation.json`` are rendered from it."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.io import atomic_path
from kdistill.labels import FINDINGS
from kdistill.saliency.regions import finding_mask
from student.explain.paths import inside, study_folder
from student.explain.saliency import FigureInputs, SaliencyMethod, colour_bar, colour_scale, deletion_aucs, \
    map_figures, overlay
from student.explain.texts import complete_sentences

NO_MAP = ("No Finding",)  # a normal study has no place to point at: no overlay is drawn
IMAGE, COLOUR_BAR = "image.png", "colorbar.png"


@dataclasses.dataclass
class StudyInputs:
    """What is known of one study besides the model's output."""

    study_id: str
    pixels: np.ndarray  # (H, W) float in [0, 1], the model's input
    display: np.ndarray | None = None  # (H', W') float in [0, 1], larger, for the page; None: ``pixels``
    reference_report: str | None = None
    labels: np.ndarray | None = None  # 14 raw labels 1 / 0 / -1 / NaN
    regions: np.ndarray | None = None  # (H, W) uint16 roi bits (bit j: finding j), at the model's input size
    source: str = ""  # where the study came from, for the page
    label: str | None = None  # the readable part of its folder name (default: the id)


def reference_of(label: float | None) -> tuple[str | None, bool | None]:
    """A raw reference label -> (its word, the decision that agrees with it or None when not counted).
    Blank (not mentioned) counts as absent, as the training targets do (``blank: zeros``)."""
    if label is None:
        return None, None
    if math.isnan(label):
        return "not mentioned", False
    if label == 1:
        return "positive", True
    if label == -1:
        return "uncertain", None
    return "negative", False


def build_record(study: StudyInputs, out_dir: Path, probs: np.ndarray, decisions: np.ndarray,
                 thresholds: np.ndarray, maps: np.ndarray, method: SaliencyMethod, report: str, rationale: str,
                 figures: list[str], model=None, model_input=None, steps: int = 10,
                 figures_on: str = "positive") -> dict[str, Any]:
    """Write the study's PNGs into its own folder under ``out_dir`` and return its record.
    ``figures_on``: "positive" computes the map figures for findings decided or labelled positive
    only, "all" for every drawn map."""
    folder_name = study_folder(study.study_id, study.label)
    folder = inside(out_dir, out_dir / folder_name)
    folder.mkdir(parents=True, exist_ok=True)
    shown = np.clip(study.display if study.display is not None else study.pixels, 0, 1)
    _save_png(out_dir, folder / IMAGE, (shown * 255).round().astype(np.uint8))
    drawn = [j for j, f in enumerate(FINDINGS) if f not in NO_MAP]
    scale = colour_scale(maps[drawn], np.asarray(decisions)[drawn], method.floor)
    _save_png(out_dir, folder / COLOUR_BAR, colour_bar())
    words = [reference_of(None if study.labels is None else float(study.labels[j]))[0] for j in range(len(FINDINGS))]
    wanted = [j for j in drawn if figures_on == "all" or bool(decisions[j]) or words[j] == "positive"]
    precomputed: dict[int, dict] = {}
    if "deletion_auc" in figures and model is not None and wanted:  # one batched pass for the study's maps
        for j, values in zip(wanted, deletion_aucs(model, model_input, np.asarray(maps)[wanted], wanted, steps)):
            precomputed[j] = {"deletion_auc": values}
    rows, agree, counted = [], 0, 0
    for j, name in enumerate(FINDINGS):
        word, agreeing = reference_of(None if study.labels is None else float(study.labels[j]))
        agreement = None if agreeing is None else bool(decisions[j]) == agreeing
        if agreement is not None:
            counted += 1
            agree += int(agreement)
        row = {"name": name, "probability": round(float(probs[j]), 4), "threshold": round(float(thresholds[j]), 4),
               "decision": bool(decisions[j]), "reference": word, "agreement": agreement, "map": None}
        if j in drawn:
            row["map"] = _draw_map(out_dir, folder, shown, maps[j], scale, j, bool(decisions[j]), study,
                                   figures if j in wanted else [], model, model_input, steps, precomputed.get(j))
        rows.append(row)
    return {
        "study_id": study.study_id,
        "folder": folder_name,
        "source": study.source,
        "image": IMAGE,
        "image_size": list(shown.shape),
        "model_input_size": list(study.pixels.shape),
        "findings": rows,
        "probabilities": {r["name"]: r["probability"] for r in rows},
        "positive_findings": [r["name"] for r in rows if r["decision"]],
        "agreement": {"agree": agree, "counted": counted} if study.labels is not None else None,
        "report": complete_sentences(report).to_dict(),
        "rationale": complete_sentences(rationale).to_dict(),
        "reference_report": study.reference_report,
        "saliency": {"method": method.name, "title": method.title, "description": method.description,
                     "units": method.units, "scale": list(scale), "colour_bar": COLOUR_BAR},
    }


def _draw_map(out_dir: Path, folder: Path, shown: np.ndarray, saliency: np.ndarray, scale: tuple[float, float],
              j: int, decided: bool, study: StudyInputs, figures: list[str], model, model_input,
              steps: int, precomputed: dict | None = None) -> dict[str, Any]:
    """Write finding ``j``'s overlay (muted when it is not decided positive) and compute its figures."""
    region = None if study.regions is None else finding_mask(np.asarray(study.regions)[None], j)[0]
    file = f"map_{FINDINGS[j].lower().replace(' ', '_')}.png"
    _save_png(out_dir, folder / file, overlay(shown, _resize(saliency, shown.shape), scale, muted=not decided))
    peak = float(saliency.max())
    return {"file": file, "muted": not decided, "max": round(peak, 4), "clipped": peak > scale[1],
            "region": region is not None and bool(region.any()),
            "figures": map_figures(figures, FigureInputs(saliency, region, model, model_input, j, steps, precomputed))}


def _resize(saliency: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(saliency.shape) == tuple(shape):
        return saliency
    from PIL import Image

    pil = Image.fromarray(np.asarray(saliency, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def _save_png(out_dir: Path, path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(inside(out_dir, path)) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)  # 6 (the default) took 4x longer
