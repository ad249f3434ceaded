"""The rationale cache on disk: shards written as generation goes, metadata, the final dataset.

Layout of a rationale folder::

    cache.json            teacher id, adapter hash, prompt version, generation config (+ hash)
    shards/rRRR-NNNNNN.parquet   rows as produced, one small file per batch per rank
    dataset/              the merged ``datasets`` dataset (``save_to_disk``), one row per study
    summary.json          counts: rows, unique prompts, truncated, consistent, retries

Each shard is written to a temp file and ``os.replace``-d in, so a killed run leaves only
whole shards; a rerun reads the study ids already in shards and skips them, so every study is
written exactly once. (``datasets.Dataset.from_generator`` cannot resume, hence our own shards.)

One writer at a time: :func:`check_metadata` refuses a folder that holds files but no
``cache.json`` (not a rationale cache), then takes the folder's lock (``kdistill.locks``), which
:func:`merge` releases; a second ``teacher generate`` on the same folder meanwhile is refused,
naming the holder.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from kdistill.errors import DataError
from kdistill.io import atomic_dir, atomic_path, write_json
from kdistill.locks import FolderLock
from kdistill.outputs import claim_folder

log = logging.getLogger(__name__)

COLUMNS = ("study_id", "prompt", "rationale", "teacher_id", "gen_config_hash", "embedding", "consistent")
# Shard-only bookkeeping, summarised into summary.json and dropped from the dataset.
EXTRA_COLUMNS = ("tries", "truncated")
# With ``topk > 0`` (teacher_generate): the teacher's top-k next-token log-probs at each position
# of the rationale as the student tokenises it, then eos (row j: the distribution for token j),
# for the student's token-level KD. Absent otherwise.
TOPK_COLUMNS = ("topk_ids", "topk_logprobs")
# What the student reads of a row (the rest is provenance): its text, its teacher embedding and,
# when present, ``consistent`` and the top-k columns.
STUDENT_COLUMNS = ("study_id", "rationale", "embedding")
META_FILE = "cache.json"
# What must match between a cache and the current run (the rest of cache.json is information).
META_KEYS = ("teacher_id", "adapter_hash", "prompt_version", "prompt_mode", "gen_config_hash")
KIND = "rationale cache"
# Locks taken by check_metadata, released by merge (folder -> lock).
_locks: dict[Path, FolderLock] = {}
DESCRIPTION = (
    "Teacher rationales for chest X-ray studies (kdistill). One row per study: the prompt the "
    "teacher read (the study's report and/or labelled findings, per the cache's prompt_mode), the "
    "rationale it wrote, the teacher's identity (base model + LoRA adapter hash) and generation "
    "config hash, the teacher's pooled hidden state over the rationale (embedding), and whether the "
    "project's rule-based CheXpert-style labeler finds in the rationale exactly the study's labelled "
    "findings (consistent). Machine-written text for research on distillation; not for clinical use."
)


def features(with_topk: bool = False):
    from datasets import Features, List, Value

    topk = {"topk_ids": List(List(Value("int32"))), "topk_logprobs": List(List(Value("float32")))} if with_topk else {}
    return Features({
        "study_id": Value("string"),
        "prompt": Value("string"),
        "rationale": Value("string"),
        "teacher_id": Value("string"),
        "gen_config_hash": Value("string"),
        "embedding": List(Value("float32")),
        "consistent": Value("bool"),
        **topk,
    })


def check_metadata(out_dir: Path, meta: dict[str, Any], force: bool) -> None:
    """Refuse to add rows made by another teacher/prompt/config to an existing cache, unless
    ``force``: then the old cache is removed and generation starts over. Refuses a folder that is
    not a rationale cache, and takes the folder's lock until :func:`merge` (or an error here)."""
    out_dir = Path(out_dir)
    claim_folder(out_dir, KIND, (META_FILE,))
    if out_dir.resolve() not in _locks:
        _locks[out_dir.resolve()] = FolderLock(out_dir, KIND).acquire()
    try:
        claim_folder(out_dir, KIND, (META_FILE,))  # again, now that no other writer can race us
        _check_and_write_metadata(out_dir, meta, force)
    except BaseException:
        release(out_dir)
        raise


def _check_and_write_metadata(out_dir: Path, meta: dict[str, Any], force: bool) -> None:
    path = out_dir / META_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(path, f"not valid JSON: {err}") from None
        old.setdefault("prompt_mode", "labels+report")  # caches from before modes existed
        diff = {k: (old.get(k), meta.get(k)) for k in META_KEYS if old.get(k) != meta.get(k)}
        if diff:
            if not force:
                detail = "; ".join(f"{k}: cache {a!r} vs now {b!r}" for k, (a, b) in diff.items())
                raise DataError(path, f"rationale cache was made with a different teacher or generation config "
                                      f"({detail}); rerun with --force to discard it and regenerate")
            log.warning("rationale cache %s differs from the current config (%s); --force: starting over",
                        out_dir, ", ".join(diff))
            clear(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, meta, sort_keys=True)


def clear(out_dir: Path) -> None:
    for name in ("shards", "dataset"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (META_FILE, "summary.json", "README.md"):
        (out_dir / name).unlink(missing_ok=True)


def shard_paths(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "shards").glob("r*-*.parquet"))


def read_shards(out_dir: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in shard_paths(out_dir):
        try:
            rows.extend(pq.read_table(path).to_pylist())
        except Exception as err:  # a shard is whole (os.replace) unless the disk lied
            raise DataError(path, f"unreadable rationale shard ({err}); delete it to regenerate its rows") from None
    return rows


def done_keys(out_dir: Path) -> set[str]:
    import pyarrow.parquet as pq

    keys: set[str] = set()
    for path in shard_paths(out_dir):
        try:
            keys.update(pq.read_table(path, columns=["study_id"]).column("study_id").to_pylist())
        except Exception as err:  # pyarrow: ArrowInvalid for a truncated file, KeyError for another schema
            raise DataError(path, f"unreadable rationale shard ({type(err).__name__}: {err}); delete it to "
                                  "regenerate its rows") from None
    return keys


class ShardWriter:
    """Writes one rank's rows as numbered parquet shards, atomically."""

    def __init__(self, out_dir: Path, rank: int, with_topk: bool = False):
        self.with_topk = with_topk
        self.dir = out_dir / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        mine = sorted(self.dir.glob(f"r{rank:03d}-*.parquet"))
        self.next = int(mine[-1].stem.split("-")[1]) + 1 if mine else 0
        self.written = 0

    def write(self, rows: Sequence[dict[str, Any]]) -> Path | None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return None
        table = pa.Table.from_pylist(list(rows), schema=_arrow_schema(self.with_topk))
        path = self.dir / f"r{self.rank:03d}-{self.next:06d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, str(tmp))
        self.next += 1
        self.written += len(rows)
        return path


def _arrow_schema(with_topk: bool = False):
    import pyarrow as pa

    topk = [("topk_ids", pa.list_(pa.list_(pa.int32()))), ("topk_logprobs", pa.list_(pa.list_(pa.float32())))]
    return pa.schema([
        ("study_id", pa.string()), ("prompt", pa.string()), ("rationale", pa.string()),
        ("teacher_id", pa.string()), ("gen_config_hash", pa.string()),
        ("embedding", pa.list_(pa.float32())), ("consistent", pa.bool_()),
        ("tries", pa.int32()), ("truncated", pa.bool_()),
        *(topk if with_topk else []),
    ])


def merge(out_dir: Path, order: Sequence[str], meta: dict[str, Any] | None = None) -> tuple[Any, dict[str, int]]:
    """All shards -> ``<out>/dataset`` (rows in ``order``, the input study order); checks every
    study of ``order`` is there exactly once. The dataset's ``DatasetInfo`` carries its
    description and features (and ``meta``, cache.json's content, as its config name's source).
    Returns (dataset, counts)."""
    from datasets import Dataset, DatasetInfo

    rows = read_shards(out_dir)
    by_key: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for row in rows:
        if row["study_id"] in by_key:
            duplicates += 1
            continue
        by_key[row["study_id"]] = row
    if duplicates:  # cannot happen through ShardWriter + done_keys; say so loudly if it does
        log.error("rationale shards in %s hold %d duplicate study rows; kept the first of each", out_dir, duplicates)
    missing = [k for k in order if k not in by_key]
    if missing:
        raise DataError(out_dir / "shards", f"{len(missing)} studies have no rationale (e.g. {missing[:3]}); rerun to finish")
    ordered = [by_key[k] for k in order]
    counts = {
        "rows": len(ordered),
        "consistent": sum(bool(r["consistent"]) for r in ordered),
        "retried": sum(r["tries"] > 1 for r in ordered),
        "truncated": sum(bool(r["truncated"]) for r in ordered),
        "duplicates_dropped": duplicates,
    }
    # shards of one cache agree (topk is in gen_config_hash, which check_metadata holds fixed)
    with_topk = all(r.get("topk_ids") is not None for r in ordered)
    columns = COLUMNS + (TOPK_COLUMNS if with_topk else ())
    data = {c: [r[c] for r in ordered] for c in columns}
    info = DatasetInfo(description=DESCRIPTION + _meta_line(meta), features=features(with_topk),
                       license="research use; the source reports' terms apply")
    dataset = Dataset.from_dict(data, features=features(with_topk), info=info)
    _save_dataset_atomic(dataset, out_dir / "dataset")
    release(out_dir)
    return dataset, counts


def release(out_dir: Path) -> None:
    """Release the folder's lock taken by :func:`check_metadata` (merge does, when it is done)."""
    lock = _locks.pop(Path(out_dir).resolve(), None)
    if lock is not None:
        lock.release()


def _meta_line(meta: dict[str, Any] | None) -> str:
    if not meta:
        return ""
    keys = ("teacher_id", "prompt_version", "prompt_mode", "gen_config_hash", "tokenizer_hash")
    return " Made by: " + ", ".join(f"{k}={meta[k]}" for k in keys if k in meta) + "."


def _save_dataset_atomic(dataset, path: Path) -> None:
    with atomic_dir(path) as tmp:
        dataset.save_to_disk(str(tmp))


def load_rationales(path: str | Path, columns: Sequence[str] = COLUMNS):
    """The rationale cache as a ``datasets.Dataset`` (``path`` = the rationale folder or its
    ``dataset/``), with at least ``columns`` (the student reads ``STUDENT_COLUMNS``)."""
    import datasets

    path = Path(path)
    folder = path / "dataset" if (path / "dataset").is_dir() else path
    if not folder.is_dir():
        raise DataError(folder, "rationale cache not found (run `kdistill teacher generate`)")
    try:
        dataset = datasets.load_from_disk(str(folder))
    except Exception as err:  # datasets raises several types for a folder that is not a dataset
        raise DataError(folder, f"not a datasets folder ({type(err).__name__}: {err})") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(folder, "expected one Dataset of rationales, found a DatasetDict")
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(folder, f"not a rationale cache: missing column(s) {missing}; has {dataset.column_names}")
    return dataset


def tokenizer_fingerprint(tokenizer) -> str:
    """Short hash of a tokenizer's vocabulary and special tokens: equal hashes tokenise alike.

    ``cache.json`` records it (``tokenizer_hash``) so a student never trains on a cache made for
    another vocabulary."""
    import hashlib

    blob = json.dumps(
        {"vocab": sorted(tokenizer.get_vocab().items()), "special": sorted(map(str, tokenizer.all_special_tokens))},
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
