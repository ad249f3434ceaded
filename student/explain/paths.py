"""Where explain writes: one folder per study, always inside ``--out``.

A study id comes from a CSV or a file name, so it is untrusted: ``..``, ``/abs``, ``a/../../x``
or ``...png`` must not reach outside the output folder, and two ids that sanitise alike
(``a/x.png`` and ``b/x.jpg``) must not share a folder. The folder name is the sanitised id (letters,
digits, ``-`` and ``_``, at most 48 characters) plus ``-`` and the first 10 hex digits of the
SHA-256 of the raw id, so distinct ids get distinct folders and no name is ``.`` or ``..``.
Every path written is checked with :func:`inside` before the write.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable

from kdistill.errors import DataError

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_NAME = 48


class OutsideOutput(RuntimeError):
    """A path explain was about to write lies outside its output folder (a bug, never bad input)."""


def study_folder(raw_id: str, label: str | None = None) -> str:
    """A folder name for ``raw_id`` that is safe on every filesystem and unique per raw id; its
    readable part comes from ``label`` when given (an image's file name), else from the id."""
    raw = str(raw_id)
    name = _UNSAFE.sub("_", raw if label is None else str(label)).strip("_")[:_MAX_NAME] or "study"
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{name}-{digest}"


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, after checking that it lies inside ``root`` (symlinks followed)."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise OutsideOutput(f"refusing to write {path}: it resolves to {path_r}, outside the output folder {root_r}")
    return path_r


def unique_ids(ids: Iterable[str], what: str) -> list[str]:
    """The ids as strings; a repeated id is a ``DataError`` (its outputs would overwrite each other)."""
    seen: dict[str, int] = {}
    out = []
    for i, raw in enumerate(ids):
        raw = str(raw)
        if raw in seen:
            raise DataError(what, f"study id {raw!r} appears twice (rows {seen[raw]} and {i}): its explained "
                                  "reports would overwrite each other")
        seen[raw] = i
        out.append(raw)
    return out
