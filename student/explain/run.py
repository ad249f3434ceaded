"""Explaining a set of studies: from a prepared cache split or from image files, through the
model, to the records and pages. Entry points: ``kdistill explain`` (:func:`main`) and the
pipeline's explain stage (:func:`run_stage`)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdistill.data.images import to_unit_float
from kdistill.errors import DataError
from kdistill.scoring import thresholds_info
from student.explain.config import ExplainConfig
from student.explain.pages import write_pages
from student.explain.paths import unique_ids
from student.explain.records import StudyInputs, build_record
from student.explain.saliency import FIGURES, METHODS


def unit_pixels(images: Any, where: str | Path | None = None) -> np.ndarray:
    """Stored pixels -> float32 (B, H, W) in [0, 1]. Integer arrays of any dtype (a prepared cache
    read by datasets comes back int64) are 8-bit grey values; values outside 0..255, or floats
    outside [0, 1], are a ``DataError`` instead of a page of white or black images."""
    arr = np.asarray(images)
    if arr.size and arr.dtype.kind in "iu" and (arr.min() < 0 or arr.max() > 255):
        raise DataError(where, f"integer pixels must be 8-bit grey values 0..255, got {arr.min()}..{arr.max()} "
                               f"({arr.dtype}); read 16-bit images with kdistill.data.images.read_image")
    if arr.size and arr.dtype.kind == "f" and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
        raise DataError(where, "float pixels must be finite and in [0, 1]")
    if arr.dtype.kind not in "iuf":
        raise DataError(where, f"pixels must be numbers, got dtype {arr.dtype}")
    return to_unit_float(arr)


def explain_batch(model: Any, images: Any, study_ids: Sequence[str], out_dir: str | Path,
                  cfg: ExplainConfig | None = None, *, references: Sequence[str | None] | None = None,
                  labels: np.ndarray | None = None, regions: np.ndarray | None = None,
                  displays: Sequence[np.ndarray] | None = None, sources: Sequence[str] | None = None,
                  folder_labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run ``model.predict`` on ``images`` (B, H, W) and write each study's PNGs into its own
    folder under ``out_dir``; returns the records (``write_pages`` renders them)."""
    import torch

    cfg = cfg or ExplainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = unique_ids(study_ids, "explain input")
    pixels = unit_pixels(images, "explain input")
    result = model.predict(pixels, max_new_tokens=_token_budget(model, cfg))
    method = METHODS[cfg.saliency]
    x = torch.as_tensor(pixels)[:, None]
    maps = method.maps(model, x, result)
    thresholds = _thresholds(model)
    # figures that run the model (deletion AUC) need its forward pass; a predict-only stand-in has none
    needs_model = any(FIGURES[f].needs_model for f in cfg.figures) and callable(model)
    records = []
    for i, study_id in enumerate(ids):
        study = StudyInputs(
            study_id, pixels[i],
            display=None if displays is None else displays[i],
            reference_report=None if references is None else references[i],
            labels=None if labels is None else np.asarray(labels[i], dtype=np.float64),
            regions=None if regions is None else regions[i],
            source="" if sources is None else sources[i],
            label=None if folder_labels is None else folder_labels[i])
        records.append(build_record(
            study, out_dir, np.asarray(result["probs"][i]), np.asarray(result["decisions"][i], dtype=bool),
            thresholds, maps[i], method, _text(result, "reports", i), _text(result, "rationales", i), cfg.figures,
            model=model if needs_model else None, model_input=x[i:i + 1], steps=cfg.deletion_steps,
            figures_on=cfg.figures_on))
    return records


def _token_budget(model: Any, cfg: ExplainConfig) -> int:
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens
    return int(getattr(getattr(model, "cfg", None), "max_text_len", 64))


def _thresholds(model: Any) -> np.ndarray:
    t = getattr(model, "thresholds", None)
    if t is None:
        return np.full(14, 0.5)
    return np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, dtype=np.float64)


def _text(result: dict, key: str, i: int) -> str:
    texts = result.get(key) or []
    return texts[i] if i < len(texts) else ""


def explain_prepared(checkpoint: str | Path, prepared: str | Path, out_dir: str | Path, cfg: ExplainConfig) -> dict:
    """Explain the first ``cfg.max_studies`` studies of a prepared cache split."""
    from kdistill.data.prepare import load_prepared, read_batch
    from kdistill.data.sections import report_text

    import student

    data = load_prepared(prepared)
    if cfg.split not in data:
        raise DataError(prepared, f"no split {cfg.split!r} in the prepared cache (has {', '.join(data)})")
    split = data[cfg.split]
    n = min(cfg.max_studies, len(split))
    unique_ids(read_batch(split, slice(0, n), ["study_id"])["study_id"], prepared)
    columns = [c for c in ("study_id", "image", "findings", "impression", "labels", "roi_bits") if c in split.column_names]
    model = student.load(checkpoint)
    order = getattr(getattr(model, "cfg", None), "report_order", "findings_first")
    started, records = time.time(), []
    source = f"prepared cache {prepared}, split {cfg.split}"
    for start in range(0, n, cfg.batch_size):
        batch = read_batch(split, slice(start, min(start + cfg.batch_size, n)), columns)
        refs = None
        if "findings" in batch:
            refs = [report_text(f or "", i or "", order) or None for f, i in zip(batch["findings"], batch["impression"])]
        records += explain_batch(model, batch["image"], batch["study_id"], out_dir, cfg, references=refs,
                                 labels=batch.get("labels"), regions=batch.get("roi_bits"),
                                 sources=[source] * len(batch["study_id"]))
    return write_pages(records, Path(out_dir), str(checkpoint), thresholds_info(checkpoint), source=source,
                       wall_s=time.time() - started)


def explain_files(checkpoint: str | Path, paths: Sequence[str | Path], out_dir: str | Path, cfg: ExplainConfig) -> dict:
    """Explain image files (8/16-bit PNG, JPEG, DICOM): each read to [0, 1] by
    ``kdistill.data.images.read_image``, resized to the model's input, shown up to ``display_size``."""
    from kdistill.data.images import read_image, resize

    import student

    paths = [Path(p) for p in paths]
    ids = unique_ids([str(p) for p in paths], "--images")
    model = student.load(checkpoint)
    size = tuple(model.image_size)
    started, records = time.time(), []
    for start in range(0, len(paths), cfg.batch_size):
        chunk = paths[start:start + cfg.batch_size]
        full = [read_image(p) for p in chunk]
        records += explain_batch(model, np.stack([resize(a, size) for a in full]), ids[start:start + len(chunk)],
                                 out_dir, cfg, displays=[_fit(a, cfg.display_size) for a in full],
                                 sources=[f"image file {p}" for p in chunk], folder_labels=[p.name for p in chunk])
    return write_pages(records, Path(out_dir), str(checkpoint), thresholds_info(checkpoint), source="image files",
                       wall_s=time.time() - started)


def _fit(image: np.ndarray, longest: int) -> np.ndarray:
    """``image`` scaled down so its longest side is at most ``longest`` (never enlarged)."""
    from kdistill.data.images import resize

    h, w = image.shape
    scale = longest / max(h, w)
    if scale >= 1:
        return image
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def run_stage(cfg: ExplainConfig, ctx) -> dict:
    return explain_prepared(ctx.stage_dir("student"), ctx.stage_dir("prepare"), ctx.stage_dir("explain"), cfg)


def main(argv: list[str] | None = None, prog: str = "kdistill explain") -> int:
    from kdistill.command import add_config_arguments, stage_config

    parser = argparse.ArgumentParser(prog=prog, description="Explained reports for images: per study a page with "
                                     "the radiograph, the generated report and rationale, per finding the "
                                     "probability, threshold, decision and saliency map; an index of all studies.")
    parser.add_argument("checkpoint", type=Path, help="student checkpoint folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, nargs="+", help="image files (JPEG, 8/16-bit PNG, DICOM)")
    source.add_argument("--prepared", type=Path, help="a prepared cache (kdistill data prepare)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: index.html and one folder per study (nothing is written outside it)")
    parser.add_argument("--saliency", choices=tuple(METHODS),
                        help="the map drawn on the pages: attention (class-query maps, the default), gradcam or fused "
                             "(Grad-CAM x occlusion); the same as saliency=NAME")
    parser.add_argument("--split", help="deprecated: split=NAME")
    parser.add_argument("--max-studies", type=int, help="deprecated: max_studies=N")
    add_config_arguments(parser, "explain", example="split=validate max_studies=50 max_new_tokens=96")
    args = parser.parse_intermixed_args(argv)
    legacy = {"--split": "split", "--max-studies": "max_studies"}
    cfg = stage_config(ExplainConfig, args, "explain", flags={"split": args.split, "max_studies": args.max_studies,
                                                              "saliency": args.saliency},
                       deprecated=legacy)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.images:
        summary = explain_files(args.checkpoint, args.images, args.out, cfg)
    else:
        summary = explain_prepared(args.checkpoint, args.prepared, args.out, cfg)
    print(f"wrote {summary['n_studies']} explained reports: {summary['index']} ({summary['studies_per_s']} studies/s; "
          f"reports ending with a full sentence: {summary['reports_ended_text']})")
    return 0
