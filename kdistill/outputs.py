"""What kdistill wrote: recognising its own output folders, and recording a stage's files.

**Never overwrite what the tool did not write.** Every command that writes into ``--out`` first
calls :func:`claim_folder`: a missing or empty folder is fine, and so is a folder holding this
tool's output of the same kind, recognised by its marker file (``training_config.json`` for a
student checkpoint, ``meta.json`` for a prepared cache, ``cache.json`` for a rationale cache,
``.kdistill-run.json`` or a stage's ``.stage.json`` for a run folder, ...). Anything else is
refused with the files it holds named, unless the user passes ``--overwrite`` (or
``overwrite=true`` among the ``key=value`` overrides).

**Output manifests.** :func:`manifest` lists every file under a folder with its size, and a hash
for small files or the modification time for big ones; :func:`manifest_problems` compares a
folder against one, so ``kdistill run`` never trusts a "done" marker whose outputs were deleted,
truncated or replaced.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from kdistill.errors import DataError
from kdistill.locks import LOCK_FILE, output_lock

# Files the pipeline and the locks put in any folder they manage: they never make a folder "used".
BOOKKEEPING = (LOCK_FILE, ".stage.json")
HASH_BELOW = 1 << 20  # files up to 1 MiB are hashed; bigger ones are recorded by size and mtime


def pop_overwrite(overrides: list[str]) -> bool:
    """Remove ``overwrite=true|false`` from a command's ``key=value`` overrides; return its value
    (it is a permission for this invocation, not part of the stage's config or its hash)."""
    import yaml

    value = False
    for item in list(overrides):
        key, _, raw = item.partition("=")
        if key.strip() == "overwrite":
            overrides.remove(item)
            parsed = yaml.safe_load(raw) if raw else True
            if not isinstance(parsed, bool):
                raise DataError(None, f"overwrite={raw!r}: must be true or false")
            value = parsed
    return value


def _entries(folder: Path, ignore: Iterable[str]) -> list[str]:
    skip = set(BOOKKEEPING) | set(ignore)
    return sorted(p.name for p in folder.iterdir() if p.name not in skip)


Marker = str | tuple[str, ...]


def _has(folder: Path, marker: Marker) -> bool:
    names = (marker,) if isinstance(marker, str) else marker
    return all(any(folder.glob(name)) for name in names)


def claim_folder(folder: str | Path, kind: str, markers: Sequence[Marker], overwrite: bool = False,
                 ignore: Iterable[str] = ()) -> None:
    """Refuse to write into ``folder`` unless it is missing, empty (but for lock and stage
    markers and ``ignore``), holds one of ``markers`` (a name or a glob such as ``.work-*``; a
    tuple of them: all present), or ``overwrite`` is set. Raises ``DataError`` naming the folder
    and what it holds."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, f"exists and is a file; the {kind} is written as a folder here: choose another --out")
    if not folder.is_dir() or overwrite:
        return
    held = _entries(folder, ignore)
    if not held or any(_has(folder, m) for m in markers):
        return
    shown = ", ".join(held[:6]) + (f" and {len(held) - 6} more" if len(held) > 6 else "")
    wanted = " or ".join(m if isinstance(m, str) else " + ".join(m) for m in markers)
    raise DataError(folder, f"exists, is not empty ({shown}) and is not a kdistill {kind} "
                            f"(no {wanted}); refusing to overwrite files kdistill did not write: "
                            "choose another --out, or pass --overwrite (overwrite=true) to write into it anyway")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def manifest(folder: str | Path, exclude: Iterable[str | Path] = ()) -> dict[str, dict[str, Any]]:
    """{relative path: {"size": bytes, "sha256": ... (small files) | "mtime_ns": ... (big ones)}}
    of every file under ``folder``, leaving out ``BOOKKEEPING`` files and the ``exclude`` folders
    (absolute, or relative to ``folder``: nested outputs recorded elsewhere)."""
    folder = Path(folder)
    skip = {(folder / e).resolve() for e in exclude}
    out: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in skip)
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(folder).as_posix()
            if name in BOOKKEEPING or path.is_symlink():
                continue
            st = path.stat()
            entry: dict[str, Any] = {"size": st.st_size}
            if st.st_size <= HASH_BELOW:
                entry["sha256"] = _sha256(path)
            else:
                entry["mtime_ns"] = st.st_mtime_ns
            out[rel] = entry
    return out


def manifest_problems(folder: str | Path, recorded: dict[str, dict[str, Any]], limit: int = 5) -> list[str]:
    """What differs between ``folder`` and its recorded manifest: files missing, of another size,
    with other contents (hash) or rewritten since (mtime). Files added since are not problems."""
    folder = Path(folder)
    problems: list[str] = []
    for rel, entry in recorded.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        else:
            st = path.stat()
            if st.st_size != entry.get("size"):
                problems.append(f"{rel} is {st.st_size} bytes, was {entry.get('size')}")
            elif "sha256" in entry and _sha256(path) != entry["sha256"]:
                problems.append(f"{rel} has other contents")
            elif "mtime_ns" in entry and st.st_mtime_ns != entry["mtime_ns"]:
                problems.append(f"{rel} was rewritten since")
        if len(problems) >= limit:
            problems.append("...")
            break
    return problems


@contextlib.contextmanager
def own_output(folder: str | Path, kind: str, markers: Sequence[Marker], overwrite: bool = False,
               enabled: bool = True) -> Iterator[None]:
    """Claim ``folder`` (:func:`claim_folder`) and hold its lock (``kdistill.locks``) for the
    block. ``enabled=False`` (the other processes of a multi-process run) does neither: the main
    process speaks for all of them."""
    if not enabled:
        yield
        return
    claim_folder(folder, kind, markers, overwrite)  # before the lock file is made in a foreign folder
    with output_lock(folder, kind):
        claim_folder(folder, kind, markers, overwrite)  # again, now that no other writer can race us
        yield
