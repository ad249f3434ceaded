"""Logging set-up shared by the CLI and the pipeline runner."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None, file: str | Path | None = None) -> None:
    """Console logging at ``level`` (default ``$KDISTILL_LOG_LEVEL`` or INFO), plus ``file``."""
    level = level or os.environ.get("KDISTILL_LOG_LEVEL", "INFO")
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_kdistill", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        handler._kdistill = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if file is not None:
        path = str(Path(file).resolve())
        if not any(getattr(h, "baseFilename", None) == path for h in root.handlers):
            fh = logging.FileHandler(path)
            fh.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(fh)
    for noisy in ("urllib3", "filelock", "datasets", "PIL", "matplotlib", "fsspec"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
