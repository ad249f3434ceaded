"""``kdistill explain``: explained reports for images — per study a JSON (probabilities, decisions,
report, rationale, map files) and overlays of the per-finding maps, plus one HTML index.

Reads a student checkpoint (``student.load``) and either image files or a prepared cache split.
Everything is written under ``--out``; nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdistill.data.images import to_unit_float
from kdistill.io import atomic_path, write_text_atomic
from kdistill.labels import FINDINGS

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExplainConfig:
    split: str = "test"
    max_studies: int = 16
    batch_size: int = 8
    maps_per_study: int = 3  # overlays for the decided-positive findings, at least the top-k by probability


def _overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grayscale image in [0,1] (H,W) + map (H,W) -> RGB uint8 with the map as a heat layer."""
    from matplotlib import colormaps

    span = float(saliency.max() - saliency.min())
    norm = (saliency - saliency.min()) / span if span > 0 else np.zeros_like(saliency)
    heat = colormaps["inferno"](norm)[..., :3]
    rgb = np.repeat(image[..., None], 3, axis=2)
    return (255 * ((1 - alpha * norm[..., None]) * rgb + alpha * norm[..., None] * heat)).clip(0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)


def explain_batch(model: Any, images: np.ndarray, study_ids: Sequence[str], out_dir: Path,
                  maps_per_study: int = 3, references: Sequence[str] | None = None) -> list[dict]:
    """Explain ``images`` (B,H,W) uint8 or float in [0,1]; writes ``out_dir/<study_id>/``."""
    result = model.predict(images)
    pixels = to_unit_float(images)
    records = []
    for i, study_id in enumerate(study_ids):
        folder = out_dir / _safe_name(study_id)
        folder.mkdir(parents=True, exist_ok=True)
        probs = np.asarray(result["probs"][i], dtype=np.float64)
        decisions = np.asarray(result["decisions"][i], dtype=bool)
        shown = [int(j) for j in np.argsort(-probs) if decisions[j] and FINDINGS[j] != "No Finding"]
        for j in np.argsort(-probs):
            if len(shown) >= maps_per_study:
                break
            if int(j) not in shown and FINDINGS[j] != "No Finding":
                shown.append(int(j))
        maps = {}
        for j in shown:
            name = f"map_{FINDINGS[j].lower().replace(' ', '_')}.png"
            saliency = np.asarray(result["maps"][i][j], dtype=np.float32)
            _save_png(_overlay(pixels[i], saliency), folder / name)
            maps[FINDINGS[j]] = name
        _save_png((pixels[i] * 255).clip(0, 255).astype(np.uint8), folder / "image.png")
        record = {
            "study_id": study_id,
            "probabilities": {f: round(float(p), 4) for f, p in zip(FINDINGS, probs)},
            "positive_findings": [FINDINGS[j] for j in np.flatnonzero(decisions)],
            "report": result["reports"][i],
            "rationale": result["rationales"][i],
            "maps": maps,
        }
        if references is not None:
            record["reference_report"] = references[i]
        write_text_atomic(folder / "explanation.json", json.dumps(record, indent=2) + "\n")
        records.append(record)
    return records


def _safe_name(study_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(study_id))


def write_index(records: list[dict], out_dir: Path) -> Path:
    rows = []
    for r in records:
        folder = _safe_name(r["study_id"])
        figures = "".join(
            f'<figure><img src="{folder}/{html.escape(f)}" width="192"><figcaption>{html.escape(name)} '
            f'({r["probabilities"][name]:.2f})</figcaption></figure>'
            for name, f in r["maps"].items()
        )
        reference = (f"<p><b>Reference:</b> {html.escape(r['reference_report'])}</p>"
                     if r.get("reference_report") else "")
        rows.append(
            f'<section><h2>{html.escape(str(r["study_id"]))}</h2>'
            f'<div class="row"><figure><img src="{folder}/image.png" width="192"><figcaption>image</figcaption></figure>{figures}</div>'
            f'<p><b>Findings:</b> {html.escape(", ".join(r["positive_findings"]) or "none")}</p>'
            f'<p><b>Report:</b> {html.escape(r["report"])}</p>'
            f'<p><b>Rationale:</b> {html.escape(r["rationale"])}</p>{reference}</section>'
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>kdistill explained reports</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}.row{display:flex;gap:8px;flex-wrap:wrap}"
        "figure{margin:0}section{border-bottom:1px solid #ccc;padding:8px 0}</style></head><body>"
        f"<h1>Explained reports ({len(records)} studies)</h1>{''.join(rows)}</body></html>\n"
    )
    path = out_dir / "index.html"
    write_text_atomic(path, page)
    return path


def explain_prepared(checkpoint: Path, prepared: Path, out_dir: Path, cfg: ExplainConfig) -> dict:
    from kdistill.data.prepare import load_prepared, read_batch
    from kdistill.data.sections import report_text

    import student

    model = student.load(checkpoint)
    split = load_prepared(prepared)[cfg.split]
    n = min(cfg.max_studies, len(split))
    records = []
    for start in range(0, n, cfg.batch_size):
        batch = read_batch(split, slice(start, min(start + cfg.batch_size, n)), ["study_id", "image", "findings", "impression"])
        refs = [report_text(f, i, headers=False) for f, i in zip(batch["findings"], batch["impression"])]
        records += explain_batch(model, batch["image"], list(batch["study_id"]), out_dir, cfg.maps_per_study, refs)
    index = write_index(records, out_dir)
    return {"index": str(index), "n_studies": len(records)}


def explain_files(checkpoint: Path, paths: Sequence[Path], out_dir: Path, cfg: ExplainConfig) -> dict:
    from kdistill.data.images import read_image, resize

    import student

    model = student.load(checkpoint)
    records = []
    for start in range(0, len(paths), cfg.batch_size):
        chunk = paths[start : start + cfg.batch_size]
        images = np.stack([resize(read_image(p), tuple(model.image_size)) for p in chunk])
        records += explain_batch(model, images, [Path(p).stem for p in chunk], out_dir, cfg.maps_per_study)
    index = write_index(records, out_dir)
    return {"index": str(index), "n_studies": len(records)}


def run_stage(cfg: ExplainConfig, ctx) -> dict:
    return explain_prepared(ctx.stage_dir("student"), ctx.stage_dir("prepare"), ctx.stage_dir("explain"), cfg)


def main(argv: list[str] | None = None, prog: str = "kdistill explain") -> int:
    from kdistill.command import add_config_arguments, stage_config

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="student checkpoint folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, nargs="+", help="image files (JPEG/PNG/DICOM)")
    source.add_argument("--prepared", type=Path, help="a prepared cache (kdistill data prepare)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", help="deprecated: split=NAME")
    parser.add_argument("--max-studies", type=int, help="deprecated: max_studies=N")
    add_config_arguments(parser, "explain", example="split=validate max_studies=50")
    args = parser.parse_intermixed_args(argv)
    legacy = {"--split": "split", "--max-studies": "max_studies"}
    cfg = stage_config(ExplainConfig, args, "explain", flags={"split": args.split, "max_studies": args.max_studies},
                       deprecated=legacy)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.images:
        summary = explain_files(args.checkpoint, args.images, args.out, cfg)
    else:
        summary = explain_prepared(args.checkpoint, args.prepared, args.out, cfg)
    print(f"wrote {summary['n_studies']} explained reports: {summary['index']}")
    return 0
