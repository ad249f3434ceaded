"""The one exception type for bad input, and the counter used when the user asked to skip it."""
from __future__ import annotations

import collections
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input: names the file (or row) and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):
        # Picklable with both arguments, so it crosses process-pool boundaries intact.
        return (type(self), (self.path, self.problem))


class SkipCounter:
    """Raises on bad input, or (``on_error="skip"``) logs it, counts it by kind and goes on.

    Nothing is dropped silently: ``summary()`` lists every kind with its count, and callers
    put it in their outputs.
    """

    def __init__(self, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def __call__(self, error: DataError, kind: str) -> None:
        if self.on_error == "raise":
            raise error
        self.counts[kind] += 1
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(str(error))
        log.warning("skipped (%s): %s", kind, error)

    def summary(self) -> dict[str, int]:
        return dict(self.counts)
