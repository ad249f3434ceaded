"""``kdistill data prepare``: decode and resize every image once into an Arrow cache.

Training then reads SxS uint8 arrays straight from memory-mapped Arrow files instead of
decoding 2-3k pixel JPEGs each epoch (``benchmarks/prepare_read.py`` measures the gain).

Output folder (the "Prepared cache" contract in COMMON.md)::

    OUT/meta.json    {"size": S, "root": ..., "counts": {split: rows, "skipped": {...}}, ...}
    OUT/dataset/     a datasets.DatasetDict (save_to_disk), one split per MIMIC split, columns:
                     study_id, subject_id, dicom_id, view, image (uint8 SxS), labels (14 float32,
                     NaN = blank), findings, impression, roi_boxes ([finding_index, x0, y0, x1, y1]
                     in prepared pixels), roi_bits (uint16 SxS, bit i = finding i's region)

Geometry: images are resized plainly to SxS (no padding; aspect ratio is not kept); the expert
regions follow them into prepared pixels as ``kdistill.data.prepare_rois`` says (boxes reaching
outside the image are kept, clipped, and counted as ``counts["clipped_rois"]``).

Robustness: studies are split into shards of ``shard_size`` processed by a process pool; each
shard is written to a temporary folder and moved into place with ``os.replace``, so an
interrupted run resumes by skipping finished shards (the work folder is keyed by a hash of the
inputs and settings, so changed settings never reuse stale shards). The final DatasetDict is
written to a temporary folder and swapped in; ``meta.json`` is written last, atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from kdistill.io import atomic_dir, write_json
from kdistill.outputs import own_output, pop_overwrite
from kdistill.data.images import read_resized_uint8
from kdistill.data.mimic import SPLITS
from kdistill.data.prepare_rois import rasterize_rois
from kdistill.data.sources import open_source
from kdistill.data.study import Study
from kdistill.errors import DataError, SkipCounter
from kdistill.labels import NUM_FINDINGS

log = logging.getLogger(__name__)

DATASET_DIR = "dataset"
META = "meta.json"
_FORMAT_VERSION = 1
# What marks a folder as a prepared cache this tool wrote: its meta.json, or the work folder of
# an interrupted run (kdistill.outputs.claim_folder).
MARKERS = (META, ".work-*")
KIND = "prepared cache"


@dataclasses.dataclass
class PrepareConfig:
    """The ``prepare`` section of a run config."""

    size: int = 128  # prepared images are size x size
    workers: int = 0  # processes; 0 = one per CPU core
    on_error: Literal["raise", "skip"] = "raise"
    shard_size: int = 256  # studies per shard (the unit of resumption and of parallel work)
    images: Literal["first", "all"] = "first"  # one image per study, or one row per image
    views: list[str] | None = dataclasses.field(default_factory=lambda: ["PA", "AP"])  # None: all views

    def validate(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


def features(size: int):
    """The cache's datasets schema for SxS images."""
    from datasets import Array2D, Features, List, Value

    return Features({
        "study_id": Value("string"),
        "subject_id": Value("string"),
        "dicom_id": Value("string"),
        "view": Value("string"),
        "image": Array2D((size, size), "uint8"),
        "labels": List(Value("float32"), length=NUM_FINDINGS),
        "findings": Value("string"),
        "impression": Value("string"),
        "roi_boxes": List(List(Value("float32"), length=5)),
        "roi_bits": Array2D((size, size), "uint16"),
    })


def load_prepared(path: str | Path):
    """A prepared folder (with meta.json and dataset/) or the dataset folder -> DatasetDict."""
    from datasets import load_from_disk

    path = Path(path)
    target = path / DATASET_DIR if (path / DATASET_DIR).is_dir() else path
    if not (target / "dataset_dict.json").is_file():
        raise DataError(path, "not a prepared cache (no dataset/dataset_dict.json); run 'kdistill data prepare'")
    try:
        return load_from_disk(str(target))
    except Exception as err:  # datasets raises several types for a damaged folder (ArrowInvalid, JSON, OSError)
        raise DataError(target, f"damaged prepared cache ({type(err).__name__}: {err}); run 'kdistill data prepare' "
                                "again") from None


def read_batch(dataset, rows: slice | list[int], columns: list[str] | None = None) -> dict[str, Any]:
    """Rows of a prepared split -> arrays in their stored dtypes: image (n, S, S) uint8, roi_bits
    (n, S, S) uint16, labels (n, 14) float32, roi_boxes a list of (k, 5) float32, strings as lists.

    ``dataset.with_format("numpy")`` works too but widens integer arrays to int64 (8x the bytes
    of uint8 images); this reads the Arrow buffers directly."""
    table = dataset.with_format("arrow")[rows]
    out: dict[str, Any] = {}
    for name in columns or table.column_names:
        column = table.column(name).combine_chunks()
        if name in ("image", "roi_bits"):
            out[name] = _stacked(column)
        elif name == "labels":
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), NUM_FINDINGS)
        elif name == "roi_boxes":
            out[name] = [np.asarray(boxes, dtype=np.float32).reshape(-1, 5) for boxes in column.to_pylist()]
        else:
            out[name] = column.to_pylist()
    return out


def _stacked(column) -> np.ndarray:
    """An image-like Arrow column -> (n, H, W) in its stored dtype. The cache's Array2D columns
    convert directly; plain nested lists (datasets built without the cache's features) are
    stacked and kept in their Arrow value type."""
    import pyarrow as pa

    array = column.to_numpy(zero_copy_only=False)
    if array.dtype != object:
        return array
    value_type = column.type
    while pa.types.is_list(value_type) or pa.types.is_large_list(value_type) or pa.types.is_fixed_size_list(value_type):
        value_type = value_type.value_type
    return np.asarray(column.to_pylist(), dtype=value_type.to_pandas_dtype())


def prepare(
    root: str | Path,
    out: str | Path,
    size: int = 128,
    workers: int = 0,
    on_error: str = "raise",
    shard_size: int = 256,
    images: str = "first",
    views: list[str] | None = ("PA", "AP"),
    source: str = "mimic",
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build (or resume, or find up to date) the prepared cache of ``root`` (a dataset of the
    ``kdistill.data.sources`` source ``source``) in ``out``; returns meta. ``out`` must be new,
    empty or a prepared cache, unless ``overwrite``; it is locked while it is written. ``options``:
    the source's loader options (mimic: reports_root, labels)."""
    with own_output(out, KIND, MARKERS, overwrite):
        return _prepare(Path(root), Path(out), size, workers, on_error, shard_size, images, views, source,
                        dict(options or {}))


def _prepare(root: Path, out: Path, size: int, workers: int, on_error: str, shard_size: int, images: str,
             views, source: str, options: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    counter = SkipCounter(on_error)
    data = open_source(source, root, **options)
    studies = data.load_studies(views=views, images=images, on_error=on_error, counter=counter)
    views_of = data.image_views() if images == "all" else {}
    tasks_by_split = _plan(studies, images, views_of)
    fingerprint = _fingerprint(root, size, images, views, tasks_by_split, options)
    meta_path = out / META
    if meta_path.is_file() and (out / DATASET_DIR).is_dir():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):  # a damaged meta.json: rebuild (it is written last, atomically)
            meta = {}
        if isinstance(meta, dict) and meta.get("fingerprint") == fingerprint:
            log.info("prepared cache %s is up to date", out)
            return meta

    work = out / f".work-{fingerprint}"
    for stale in out.glob(".work-*"):
        if stale != work:
            shutil.rmtree(stale, ignore_errors=True)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    tasks = []
    for split, items in tasks_by_split.items():
        for start in range(0, len(items), shard_size):
            name = f"{split}-{start // shard_size:05d}"
            tasks.append((str(work / "shards" / name), str(root), size, on_error, items[start: start + shard_size]))
    todo = [t for t in tasks if not Path(t[0]).is_dir()]
    log.info("prepare: %d shards, %d already written, %d to do", len(tasks), len(tasks) - len(todo), len(todo))
    n_workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    if n_workers > 1:
        # spawn, not fork: the pipeline may already hold threads (torch, tokenizers) that fork would copy mid-lock.
        with multiprocessing.get_context("spawn").Pool(n_workers) as pool:
            for _ in tqdm(pool.imap_unordered(_write_shard, todo), total=len(todo), desc="prepare", unit="shard"):
                pass
    else:
        for task in tqdm(todo, desc="prepare", unit="shard"):
            _write_shard(task)

    counts = _assemble(out, size, tasks_by_split, tasks, counter)
    meta = {"size": size, "root": str(root), "images": images, "views": list(views) if views else None,
            "counts": counts, "fingerprint": fingerprint, "format_version": _FORMAT_VERSION,
            "wall_s": round(time.time() - started, 1)}
    write_json(meta_path, meta)
    shutil.rmtree(work, ignore_errors=True)
    return meta


def _plan(studies: list[Study], images: str, views_of: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Studies -> per split, the rows to write (one per study, or per image with images="all")."""
    plan: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for study in studies:
        for k, (path, dicom_id) in enumerate(zip(study.image_paths, study.dicom_ids or [""] * len(study.image_paths))):
            rois = [dataclasses.asdict(r) for r in study.rois if not r.dicom_id or r.dicom_id == dicom_id]
            plan[study.split].append({
                "study_id": study.study_id, "subject_id": study.subject_id, "dicom_id": dicom_id,
                "view": study.view if k == 0 else views_of.get(dicom_id, ""), "path": path, "labels": list(study.labels),
                "findings": study.findings, "impression": study.impression, "rois": rois,
            })
            if images == "first":
                break
    return plan


def _fingerprint(root: Path, size: int, images: str, views, plan, options: dict[str, Any]) -> str:
    blob = json.dumps({"v": _FORMAT_VERSION, "root": str(root.resolve()), "size": size, "images": images,
                       "views": list(views) if views else None, **({"options": options} if options else {}),
                       "rows": {s: [[r["study_id"], r["path"], r["rois"], r["labels"]] for r in rows]
                                for s, rows in plan.items()}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_shard(task) -> None:
    """Worker: read + resize the images of one shard and write it as a datasets folder."""
    from datasets import Dataset

    shard_dir, root, size, on_error, items = task
    counter = SkipCounter(on_error)
    clipped = 0
    columns: dict[str, list] = {k: [] for k in features(size)}
    for item in items:
        try:
            image, (height, width) = read_resized_uint8(item["path"], size)
            boxes, bits, n_clipped = rasterize_rois(item["rois"], Path(root), size, height, width)
        except DataError as err:
            counter(err, kind="unreadable_image")
            continue
        for key in ("study_id", "subject_id", "dicom_id", "view", "findings", "impression"):
            columns[key].append(item[key])
        columns["image"].append(image)
        columns["labels"].append(np.asarray(item["labels"], dtype=np.float32))
        columns["roi_boxes"].append(boxes)
        columns["roi_bits"].append(bits)
        clipped += n_clipped
    with atomic_dir(shard_dir) as tmp, _quiet():
        Dataset.from_dict(columns, features=features(size)).save_to_disk(str(tmp), num_shards=1)
        write_json(tmp / "shard.json", {"rows": len(columns["study_id"]), "skipped": counter.summary(),
                                        "clipped_rois": clipped}, indent=None)


def _assemble(out: Path, size: int, plan, tasks, counter: SkipCounter) -> dict[str, Any]:
    from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

    parts: dict[str, list] = {split: [] for split in plan}
    skipped = dict(counter.summary())
    clipped = 0
    for shard_dir, *_ in tasks:
        shard = Path(shard_dir)
        info = json.loads((shard / "shard.json").read_text())
        for kind, n in info["skipped"].items():
            skipped[kind] = skipped.get(kind, 0) + n
        clipped += info.get("clipped_rois", 0)
        parts[shard.name.rsplit("-", 1)[0]].append(load_from_disk(str(shard)))
    empty = {k: [] for k in features(size)}
    splits = {}
    for split, datasets_ in parts.items():
        splits[split] = (concatenate_datasets(datasets_) if datasets_
                         else Dataset.from_dict(empty, features=features(size)))
    # An empty split would be saved with no Arrow file at all, which load_from_disk rejects.
    with atomic_dir(out / DATASET_DIR) as tmp, _quiet():
        DatasetDict(splits).save_to_disk(str(tmp), num_shards={k: 1 for k, ds in splits.items() if len(ds) == 0})
    counts: dict[str, Any] = {split: len(ds) for split, ds in splits.items()}
    counts["skipped"] = skipped
    if clipped:
        log.warning("%d expert regions reach outside their image and were clipped ('kdistill data check' lists them)", clipped)
        counts["clipped_rois"] = clipped
    return counts


@contextlib.contextmanager
def _quiet():
    """No per-shard 'Saving the dataset' progress bars (hundreds of them on a real dataset)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def run_stage(cfg: PrepareConfig, ctx) -> dict[str, Any]:
    """Pipeline stage: prepare the run's dataset into ``ctx.stage_dir("prepare")``."""
    out = ctx.stage_dir("prepare")
    data = ctx.data
    meta = prepare(data.root, out, size=cfg.size, workers=cfg.workers, on_error=cfg.on_error,
                   shard_size=cfg.shard_size, images=cfg.images, views=cfg.views, source=data.name,
                   options=data.options)
    return {"path": str(out), "counts": meta["counts"]}


def main(argv: list[str] | None = None, prog: str = "kdistill data prepare") -> int:
    from kdistill.command import add_config_arguments, source_options, stage_config

    parser = argparse.ArgumentParser(prog=prog, description="Resize a dataset once into an Arrow cache "
                                     "(datasets DatasetDict) that training reads.")
    parser.add_argument("root", help="dataset root")
    parser.add_argument("--source", default="mimic", help="layout of ROOT: mimic (MIMIC-CXR-JPG and the phantom, "
                                                          "the default), chexpert, ... (kdistill.data.sources)")
    parser.add_argument("--reports-root", help="mimic: the unzipped mimic-cxr-reports folder (MIMIC-CXR-JPG has no texts)")
    parser.add_argument("--labels", choices=("chexpert", "negbio"), help="mimic: the label file to read (default chexpert)")
    parser.add_argument("--size", type=int, help="prepared images are SIZE x SIZE (the config's size, default 128)")
    parser.add_argument("--out", help="output folder (meta.json + dataset/); default ROOT/prepared_SIZE")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it holds files that are not a prepared cache")
    # kept one more release; each is the override named in its help
    parser.add_argument("--workers", type=int, help="deprecated: workers=N")
    parser.add_argument("--on-error", choices=("raise", "skip"), help="deprecated: on_error=skip")
    parser.add_argument("--shard-size", type=int, help="deprecated: shard_size=N")
    parser.add_argument("--images", choices=("first", "all"), help="deprecated: images=all")
    parser.add_argument("--views", help="deprecated: views=[PA,AP] (or views=null for all)")
    add_config_arguments(parser, "prepare", example="size=224 on_error=skip views=[PA]")
    args = parser.parse_intermixed_args(argv)
    overwrite = pop_overwrite(args.overrides) or args.overwrite
    views = None
    if args.views is not None:
        views = "all" if args.views.lower() == "all" else [v.strip().upper() for v in args.views.split(",") if v.strip()]
    legacy = {"--workers": "workers", "--on-error": "on_error", "--shard-size": "shard_size", "--images": "images",
              "--views": "views"}
    flags = {"size": args.size, "workers": args.workers, "on_error": args.on_error, "shard_size": args.shard_size,
             "images": args.images, "views": None if views == "all" else views}
    cfg = stage_config(PrepareConfig, args, "prepare", flags=flags, deprecated=legacy)
    if views == "all":
        cfg.views = None
    out = args.out or str(Path(args.root) / f"prepared_{cfg.size}")
    meta = prepare(args.root, out, size=cfg.size, workers=cfg.workers, on_error=cfg.on_error,
                   shard_size=cfg.shard_size, images=cfg.images, views=cfg.views, source=args.source, overwrite=overwrite,
                   options=source_options(args))
    counts = meta["counts"]
    print(f"prepared cache: {out} ({meta['size']}x{meta['size']})")
    for split in SPLITS:
        print(f"  {split:<9} {counts.get(split, 0)} rows")
    if counts.get("skipped"):
        print("  skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(counts["skipped"].items())))
    return 0
