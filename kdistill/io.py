"""Atomic writes: every file and folder kdistill writes appears whole or not at all.

A file is written to a temporary name beside its destination and moved into place with
``os.replace`` (atomic on one filesystem), so a reader or a killed run never sees half a file.
A folder (a ``datasets`` save, an accelerate state) is built under a temporary name and swapped
in the same way; the previous one is moved aside first and removed only after the swap.

Temporary files get the permissions a plain ``open()`` would give (0666 less the umask), not
``mkstemp``'s 0600, so outputs follow the user's umask like any other tool's.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from kdistill.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_destination(path: Path, expected: str) -> None:
    """A destination of the wrong type is the user's mistake, said in a sentence (os.replace
    would fail with IsADirectoryError / NotADirectoryError after the work was done)."""
    if expected == "a file" and path.is_dir():
        raise DataError(path, "is a folder; a file is written here (choose another path)")
    if expected == "a folder" and path.exists() and not path.is_dir():
        raise DataError(path, "is a file; a folder is written here (choose another path)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(parent, f"is a file, so {path} cannot be written below it")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    The temporary name keeps ``path``'s suffix, so writers that choose a format from the file
    name (PIL, matplotlib) write the right one. On an error the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    _check_destination(path, "a file")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any, indent: int | None = 2, **kwargs: Any) -> None:
    """JSON through :func:`write_text_atomic`. NaN and infinity are refused (``allow_nan=False``):
    they are not JSON, and a reader would fail on them far from where they were written."""
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False, **kwargs)
    except ValueError as err:
        raise ValueError(f"{path}: refusing to write a non-finite number as JSON ({err})") from None
    write_text_atomic(path, text + "\n")


def nonfinite_to_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (an undefined metric, such as an AUC of one class)
    replaced by None, recursively through dicts, lists and tuples: JSON's null, never a bare NaN.
    Only for figures that may be undefined; probabilities must be finite and are refused instead."""
    if isinstance(obj, float) or (hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0 and obj.dtype.kind == "f"):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, dict):
        return {k: nonfinite_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_none(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    An existing ``path`` is moved aside, the new folder moved in, then the old one removed, so at
    every moment either the old or the new folder is complete under its name (a crash between
    the two moves leaves the old one as ``.NAME.old-PID``). On an error the temporary folder is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    _check_destination(path, "a folder")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
