"""``synthesize(cfg, out_dir)``: a phantom dataset in the MIMIC-CXR-JPG v2 layout.

::

    out_dir/
      files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg     one frontal image per study (+ a lateral, lateral_share)
      files/pNN/pSUBJECT/sSTUDY.txt              the free-text report
      mimic-cxr-2.0.0-metadata.csv.gz            dicom_id, subject_id, study_id, ViewPosition, ...
      mimic-cxr-2.0.0-chexpert.csv.gz            subject_id, study_id, 14 findings (1.0/0.0/-1.0/blank)
      mimic-cxr-2.0.0-split.csv.gz               dicom_id, study_id, subject_id, split
      rois.jsonl                                 one region per line (box + mask) for every rendered finding
      rois/DICOM_ID_SLUG[_PART].png              binary masks (0/255, 8-bit), image size
      corpus/corpus.jsonl                        the teacher's text corpus
      phantom.json                               config, counts, prevalence (written last)

Same config -> byte-identical files, for any number of worker processes: every study draws
from its own seeded streams.  Per-study files are written directly (a temp file + rename per
file would double the file-system work of the hot loop); the dataset as a whole is atomic
instead: a rerun first removes the old ``phantom.json``, and the CSV indexes, ``rois.jsonl``
and ``phantom.json`` are written last through temp files + ``os.replace``, so a crashed run
never looks complete to a loader.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from kdistill.config import save_json, to_dict, write_text_atomic
from kdistill.labels import FINDINGS
from kdistill.data.phantom.config import PhantomConfig
from kdistill.data.phantom.corpus import write_corpus
from kdistill.data.phantom.knowledge import load_knowledge
from kdistill.data.phantom.lateral import render_lateral
from kdistill.data.phantom.render import render_study
from kdistill.data.phantom.report import label_cell, write_report
from kdistill.data.phantom.sampler import finding_set_drawer, plan_studies
from kdistill.data.phantom.spec import StudyPlan

log = logging.getLogger(__name__)

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MANIFEST = "phantom.json"


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _encode(array: np.ndarray, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _box(mask: np.ndarray) -> list[int]:
    """[x0, y0, x1, y1] in pixels, x1/y1 exclusive (the box's right/bottom pixel edges)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def make_study(plan: StudyPlan, cfg: PhantomConfig, out_dir: Path) -> dict[str, Any]:
    """Render, report and write one study; returns its label row and ROI lines."""
    know = load_knowledge()
    result = render_study(
        plan.findings, view=plan.view, size=cfg.image_size, difficulty=cfg.difficulty,
        seed=plan.seed, patient_seed=plan.patient_seed, shortcut=plan.shortcut, sex=plan.sex,
    )
    report = write_report(plan, know, np.random.default_rng([plan.seed, 4]))
    study_dir = out_dir / plan.relpath
    study_dir.mkdir(parents=True, exist_ok=True)
    _write_bytes(study_dir / f"{plan.dicom_id}.jpg", _encode(result.image, "JPEG", quality=cfg.jpeg_quality))
    _write_bytes(study_dir.with_name(study_dir.name + ".txt"), report.text.encode())
    if plan.lateral_dicom_id:
        lateral = render_lateral(plan.findings, size=cfg.image_size, difficulty=cfg.difficulty, seed=plan.seed,
                                 patient_seed=plan.patient_seed, shortcut=plan.shortcut)
        _write_bytes(study_dir / f"{plan.lateral_dicom_id}.jpg", _encode(lateral, "JPEG", quality=cfg.jpeg_quality))
    rois = []
    if cfg.write_rois:
        for region in result.regions:
            slug = know[region.finding].slug + (f"_{region.part}" if region.part else "")
            rel = f"rois/{plan.dicom_id}_{slug}.png"
            # 8-bit 0/255 rather than 1-bit: any reader (``> 0``, ``> 127``, ``/ 255``) gets it right.
            _write_bytes(out_dir / rel, _encode(region.mask.view(np.uint8) * np.uint8(255), "PNG", compress_level=1))
            rois.append({"study_id": plan.study_id, "dicom_id": plan.dicom_id, "finding": region.finding,
                         "box": _box(region.mask), "mask": rel})
    return {"labels": report.labels.tolist(), "rois": rois}


_WORKER: dict[str, Any] = {}


def _init_worker(cfg: PhantomConfig, out_dir: Path) -> None:
    _WORKER["cfg"], _WORKER["out"] = cfg, out_dir


def _work(plan: StudyPlan) -> dict[str, Any]:
    return make_study(plan, _WORKER["cfg"], _WORKER["out"])


def _results(plans: list[StudyPlan], cfg: PhantomConfig, out_dir: Path) -> Iterator[dict[str, Any]]:
    if cfg.workers <= 1 or len(plans) < 2 * cfg.workers:
        for plan in plans:
            yield make_study(plan, cfg, out_dir)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg, out_dir)) as pool:
        yield from pool.imap(_work, plans, chunksize=16)


def _gzip_csv(path: Path, header: tuple[str, ...] | list[str], rows: list[list[Any]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:  # mtime=0: same bytes every run
        gz.write(text.getvalue().encode())
    _write_bytes_atomic(path, buf.getvalue())


def _clear_previous(out_dir: Path) -> None:
    """Remove a previous phantom's files (only when a phantom manifest says it is one)."""
    if not (out_dir / MANIFEST).is_file():
        return
    (out_dir / MANIFEST).unlink()
    for sub in ("files", "rois", "corpus"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)


def synthesize(cfg: PhantomConfig, out_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Write a phantom dataset into ``out_dir``; returns counts, prevalence and wall time."""
    cfg.validate()
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    (out / "rois").mkdir(exist_ok=True)
    know = load_knowledge()
    plans = plan_studies(cfg, know)
    results = _results(plans, cfg, out)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(plans), unit="study", desc="phantom")
    labels = np.full((len(plans), len(FINDINGS)), np.nan, dtype=np.float32)
    roi_lines: list[str] = []
    for i, res in enumerate(results):
        labels[i] = res["labels"]
        roi_lines.extend(json.dumps(r) for r in res["rois"])
    render_s = time.perf_counter() - started

    corpus_counts = {"textbook": 0, "rationale": 0}
    if cfg.corpus_mb > 0:
        corpus_counts = write_corpus(out / "corpus" / "corpus.jsonl", know, cfg.corpus_mb, cfg.seed, finding_set_drawer(know, cfg))

    order = sorted(range(len(plans)), key=lambda i: (plans[i].subject_id, plans[i].study_id))
    size = cfg.image_size
    meta_rows, chex_rows, split_rows = [], [], []
    for i in order:
        p = plans[i]
        desc = "CHEST (PA AND LAT)" if p.view == "PA" else "CHEST (PORTABLE AP)"
        view_meaning = "postero-anterior" if p.view == "PA" else "antero-posterior"
        meta_rows.append([p.dicom_id, p.subject_id, p.study_id, desc, p.view, size, size, p.study_date, p.study_time,
                          desc, view_meaning, "Erect" if p.view == "PA" else "Recumbent"])
        chex_rows.append([p.subject_id, p.study_id] + [label_cell(v) for v in labels[i]])
        split_rows.append([p.dicom_id, p.study_id, p.subject_id, p.split])
        if p.lateral_dicom_id:
            meta_rows.append([p.lateral_dicom_id, p.subject_id, p.study_id, desc, "LATERAL", size, size, p.study_date,
                              p.study_time, desc, "lateral", "Erect"])
            split_rows.append([p.lateral_dicom_id, p.study_id, p.subject_id, p.split])
    write_text_atomic(out / "rois.jsonl", "".join(line + "\n" for line in roi_lines))
    _gzip_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, meta_rows)
    _gzip_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz", ("subject_id", "study_id") + FINDINGS, chex_rows)
    _gzip_csv(out / "mimic-cxr-2.0.0-split.csv.gz", ("dicom_id", "study_id", "subject_id", "split"), split_rows)

    wall = time.perf_counter() - started
    summary = {
        "root": str(out),
        "n_studies": len(plans),
        "n_subjects": len({p.subject_id for p in plans}),
        "n_images": len(plans) + sum(p.lateral_dicom_id is not None for p in plans),
        "n_rois": len(roi_lines),
        "splits": {s: sum(p.split == s for p in plans) for s in ("train", "validate", "test")},
        "views": {**{v: sum(p.view == v for p in plans) for v in ("PA", "AP")},
                  "LATERAL": sum(p.lateral_dicom_id is not None for p in plans)},
        "prevalence": {f: round(float(np.mean(labels[:, j] == 1.0)), 4) for j, f in enumerate(FINDINGS)},
        "uncertain": {f: round(float(np.mean(labels[:, j] == -1.0)), 4) for j, f in enumerate(FINDINGS)},
        "negated": {f: round(float(np.mean(labels[:, j] == 0.0)), 4) for j, f in enumerate(FINDINGS)},
        "shortcut_studies": sum(p.shortcut for p in plans),
        "corpus_docs": corpus_counts,
        "render_s": round(render_s, 3),
        "wall_s": round(wall, 3),
        "studies_per_s": round(len(plans) / max(render_s, 1e-9), 1),
    }
    save_json({"config": to_dict(cfg), **{k: v for k, v in summary.items() if k not in ("wall_s", "render_s", "studies_per_s", "root")}}, out / MANIFEST)
    log.info("phantom: %d studies in %.1fs -> %s", len(plans), wall, out)
    return summary
