"""``synthesize(cfg, out_dir)``: a phantom dataset in the MIMIC-CXR-JPG v2 layout.

::

    out_dir/
      files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg     one frontal image per study (+ a lateral, lateral_share)
      files/pNN/pSUBJECT/sSTUDY.txt              the free-text report
      mimic-cxr-2.0.0-metadata.csv.gz            dicom_id, subject_id, study_id, ViewPosition, ...
      mimic-cxr-2.0.0-chexpert.csv.gz            subject_id, study_id, 14 findings (1.0/0.0/-1.0/blank)
      ground_truth.csv.gz                        the same columns: the complete labels of every study
      mimic-cxr-2.0.0-split.csv.gz               dicom_id, study_id, subject_id, split
      rois.jsonl                                 one region per line (box + mask) for every rendered finding
      rois/DICOM_ID_SLUG[_PART].png              binary masks (0/255, 8-bit), image size
      shortcut.jsonl                             only with shortcut_finding: the marker of every image
      report_style.jsonl                         only with report_style.implied_share > 0: the implied studies
      corpus/corpus.jsonl                        the teacher's text corpus
      phantom.json                               config, counts, prevalence (written last)

``ground_truth.csv.gz`` (always written; rows and order as the chexpert file): what a complete
report of each study states, in chexpert coding: 1.0 shown and stated, -1.0 shown and hedged,
0.0 absent and negated, blank absent and not mentioned; so a finding is in the image exactly
where its cell is 1.0 or -1.0.  It equals the chexpert file in the default phantom; it differs
where ``label_noise`` left a visible finding unstated (truth: 1.0 / -1.0, chexpert: blank) and,
with ``report_style``, where a report named a cause in place of findings (the chexpert file is
then what the project's labeler reads in each report's findings and impression, see style.py).

``rois.jsonl`` keeps every region of validate/test studies and, with ``rois_fraction`` < 1,
those of a share of the train studies, chosen per study from its own stream (the images do not
change; a smaller fraction keeps a subset of a larger one's studies); masks are written only for
kept regions.

``shortcut.jsonl`` (with ``shortcut_finding``), one line per image, frontal and lateral, in study
order (as rois.jsonl)::

    {"study_id": "5...", "dicom_id": "...", "split": "train", "view": "PA", "box": [x0, y0, x1, y1],
     "drawn": true, "positive": true}

``box`` is the marker's square in stored-image pixels (x1/y1 exclusive, as rois.jsonl boxes; JPEG
coding also alters the rest of the 8x8 pixel blocks it touches), given for unmarked images too (the same place, as a control);
``drawn``: the marker is in this image; ``positive``: the study's shortcut finding is labelled 1
as the default phantom would write it (its chexpert label: label noise counts, report_style
does not), which the marker's chance follows (strength s: P(drawn | positive) = s, P(drawn | not) = 1 - s).
``shortcut_splits`` sets s per split, e.g. an evaluation phantom of another seed with the marker
reversed in every split::

    kdistill data synth --out runs/phantom_reversed --seed 1 shortcut_finding=Pneumothorax \
        shortcut_splits='{train: 0.1, validate: 0.1, test: 0.1}'

All phantoms of one seed with a ``shortcut_finding`` differ only in their markers (so the
reversed phantom of seed 0 is the seed-0 shortcut phantom with other markers); without
``shortcut_splits``, ``shortcut_strength`` applies to the train split only, as it always has.

``report_style.jsonl`` (with report_style), one line per study whose report names a cause::

    {"study_id": "5...", "syndrome": "congestive heart failure", "omitted": ["Cardiomegaly", "Pleural Effusion"],
     "stated_in": "findings+impression"}   # or "impression"

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
from kdistill.data.phantom.report import label_cell
from kdistill.data.phantom.sampler import finding_set_drawer, plan_studies
from kdistill.data.phantom.shortcut import marker_box
from kdistill.data.phantom.spec import StudyPlan
from kdistill.data.phantom.style import study_report

log = logging.getLogger(__name__)

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MANIFEST = "phantom.json"
SIDE_FILES = ("ground_truth.csv.gz", "shortcut.jsonl", "report_style.jsonl")  # besides the MIMIC files
CAUSE_DOC_SHARE = 0.04  # share of corpus docs on a cause, in the report_style regime


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
    """Render, report and write one study; returns its label rows (chexpert, truth), ROI lines,
    shortcut.jsonl rows and report_style.jsonl row (None unless its report names a cause)."""
    know = load_knowledge()
    result = render_study(
        plan.findings, view=plan.view, size=cfg.image_size, difficulty=cfg.difficulty,
        seed=plan.seed, patient_seed=plan.patient_seed, shortcut=plan.shortcut, sex=plan.sex,
    )
    written = study_report(plan, cfg, know)
    report = written.report
    study_dir = out_dir / plan.relpath
    study_dir.mkdir(parents=True, exist_ok=True)
    _write_bytes(study_dir / f"{plan.dicom_id}.jpg", _encode(result.image, "JPEG", quality=cfg.jpeg_quality))
    _write_bytes(study_dir.with_name(study_dir.name + ".txt"), report.text.encode())
    if plan.lateral_dicom_id:
        lateral = render_lateral(plan.findings, size=cfg.image_size, difficulty=cfg.difficulty, seed=plan.seed,
                                 patient_seed=plan.patient_seed, shortcut=plan.shortcut)
        _write_bytes(study_dir / f"{plan.lateral_dicom_id}.jpg", _encode(lateral, "JPEG", quality=cfg.jpeg_quality))
    rois = []
    if cfg.write_rois and plan.keep_rois:
        for region in result.regions:
            slug = know[region.finding].slug + (f"_{region.part}" if region.part else "")
            rel = f"rois/{plan.dicom_id}_{slug}.png"
            # 8-bit 0/255 rather than 1-bit: any reader (``> 0``, ``> 127``, ``/ 255``) gets it right.
            _write_bytes(out_dir / rel, _encode(region.mask.view(np.uint8) * np.uint8(255), "PNG", compress_level=1))
            rois.append({"study_id": plan.study_id, "dicom_id": plan.dicom_id, "finding": region.finding,
                         "box": _box(region.mask), "mask": rel})
    implied = None
    if written.implied is not None:
        cause = written.implied  # no sentence of its own: a required finding's statements name it (both sections)
        in_findings = cause.findings_sentence is not None or cause.impression_sentence is None
        implied = {"study_id": plan.study_id, "syndrome": cause.syndrome, "omitted": list(cause.omitted),
                   "stated_in": "findings+impression" if in_findings else "impression"}
    return {"labels": written.labels.tolist(), "truth": written.truth.tolist(), "rois": rois,
            "shortcut": _shortcut_rows(plan, cfg), "implied": implied}


def _shortcut_rows(plan: StudyPlan, cfg: PhantomConfig) -> list[dict[str, Any]]:
    if cfg.shortcut_finding is None:
        return []
    images = [(plan.dicom_id, plan.view)] + ([(plan.lateral_dicom_id, "LATERAL")] if plan.lateral_dicom_id else [])
    return [{"study_id": plan.study_id, "dicom_id": dicom_id, "split": plan.split, "view": view,
             "box": marker_box(cfg.image_size), "drawn": plan.shortcut, "positive": plan.shortcut_positive}
            for dicom_id, view in images]


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
    for name in SIDE_FILES:  # a side file of the previous phantom must not outlive it
        (out_dir / name).unlink(missing_ok=True)


def _write_indexes(out: Path, plans: list[StudyPlan], labels: np.ndarray, truth: np.ndarray, size: int) -> None:
    """The MIMIC-CXR CSV indexes and ground_truth.csv.gz, rows sorted by subject and study."""
    order = sorted(range(len(plans)), key=lambda i: (plans[i].subject_id, plans[i].study_id))
    meta_rows, chex_rows, truth_rows, split_rows = [], [], [], []
    for i in order:
        p = plans[i]
        desc = "CHEST (PA AND LAT)" if p.view == "PA" else "CHEST (PORTABLE AP)"
        view_meaning = "postero-anterior" if p.view == "PA" else "antero-posterior"
        meta_rows.append([p.dicom_id, p.subject_id, p.study_id, desc, p.view, size, size, p.study_date, p.study_time,
                          desc, view_meaning, "Erect" if p.view == "PA" else "Recumbent"])
        chex_rows.append([p.subject_id, p.study_id] + [label_cell(v) for v in labels[i]])
        truth_rows.append([p.subject_id, p.study_id] + [label_cell(v) for v in truth[i]])
        split_rows.append([p.dicom_id, p.study_id, p.subject_id, p.split])
        if p.lateral_dicom_id:
            meta_rows.append([p.lateral_dicom_id, p.subject_id, p.study_id, desc, "LATERAL", size, size, p.study_date,
                              p.study_time, desc, "lateral", "Erect"])
            split_rows.append([p.lateral_dicom_id, p.study_id, p.subject_id, p.split])
    _gzip_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, meta_rows)
    _gzip_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz", ("subject_id", "study_id") + FINDINGS, chex_rows)
    _gzip_csv(out / "ground_truth.csv.gz", ("subject_id", "study_id") + FINDINGS, truth_rows)
    _gzip_csv(out / "mimic-cxr-2.0.0-split.csv.gz", ("dicom_id", "study_id", "subject_id", "split"), split_rows)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _knob_counts(cfg: PhantomConfig, plans: list[StudyPlan], labels: np.ndarray, truth: np.ndarray,
                 implied: list[dict[str, Any]], roi_studies: set[str]) -> dict[str, Any]:
    """Manifest counts of the knobs that are on (none for the default phantom, whose manifest stays as it was)."""
    out: dict[str, Any] = {}
    if cfg.shortcut_finding is not None:
        out["shortcut_by_split"] = {s: {"drawn": sum(p.shortcut for p in plans if p.split == s),
                                        "positive": sum(p.shortcut_positive for p in plans if p.split == s)}
                                    for s in ("train", "validate", "test")}
    if cfg.rois_fraction < 1.0:
        out["roi_studies"] = {s: sum(p.study_id in roi_studies for p in plans if p.split == s) for s in ("train", "validate", "test")}
    if cfg.report_style.active:
        differs = ~((labels == truth) | (np.isnan(labels) & np.isnan(truth))).all(axis=1)
        out["report_style"] = {"implied_studies": len(implied), "labels_differ_from_truth": int(differs.sum()),
                               "by_syndrome": {name: sum(r["syndrome"] == name for r in implied) for name in load_knowledge().syndromes}}
    return out


def synthesize(cfg: PhantomConfig, out_dir: str | Path, progress: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write a phantom dataset into ``out_dir``; returns counts, prevalence and wall time. A
    non-empty ``out_dir`` that is not a phantom (no phantom.json) is refused unless ``overwrite``."""
    from kdistill.outputs import claim_folder

    claim_folder(out_dir, "phantom dataset", (MANIFEST,), overwrite)
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
    truth = labels.copy()
    roi_lines: list[str] = []
    shortcut_rows: list[dict[str, Any]] = []
    implied: list[dict[str, Any]] = []
    roi_studies: set[str] = set()
    for i, res in enumerate(results):
        labels[i], truth[i] = res["labels"], res["truth"]
        roi_lines.extend(json.dumps(r) for r in res["rois"])
        roi_studies.update(r["study_id"] for r in res["rois"][:1])
        shortcut_rows.extend(res["shortcut"])
        if res["implied"]:
            implied.append(res["implied"])
    render_s = time.perf_counter() - started

    corpus_counts = {"textbook": 0, "rationale": 0}
    if cfg.corpus_mb > 0:
        corpus_counts = write_corpus(out / "corpus" / "corpus.jsonl", know, cfg.corpus_mb, cfg.seed, finding_set_drawer(know, cfg),
                                     cause_share=CAUSE_DOC_SHARE if cfg.report_style.active else 0.0)
    write_text_atomic(out / "rois.jsonl", "".join(line + "\n" for line in roi_lines))
    if cfg.shortcut_finding is not None:
        _jsonl(out / "shortcut.jsonl", shortcut_rows)
    if cfg.report_style.active:
        _jsonl(out / "report_style.jsonl", implied)
    _write_indexes(out, plans, labels, truth, cfg.image_size)

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
        **_knob_counts(cfg, plans, labels, truth, implied, roi_studies),
        "render_s": round(render_s, 3),
        "wall_s": round(wall, 3),
        "studies_per_s": round(len(plans) / max(render_s, 1e-9), 1),
    }
    save_json({"config": to_dict(cfg), **{k: v for k, v in summary.items() if k not in ("wall_s", "render_s", "studies_per_s", "root")}}, out / MANIFEST)
    log.info("phantom: %d studies in %.1fs -> %s", len(plans), wall, out)
    return summary
