"""The shortcut: a small bright ring in the top-right corner of an image, drawn with a chance
that depends on one finding (``PhantomConfig.shortcut_finding``), so a classifier can learn the
marker in place of the finding.  Which images carry it, and where its pixels are, is written to
``shortcut.jsonl`` (see ``synth.py``), so the share of attribution on the marker is measurable.
"""
from __future__ import annotations

import numpy as np


def marker_box(size: int) -> list[int]:
    """[x0, y0, x1, y1] of the marker in pixels of a ``size`` x ``size`` image (x1/y1 exclusive)."""
    m = max(4, size // 28)
    y0, x0 = max(1, size // 64), size - max(1, size // 64) - m
    return [x0, y0, x0 + m, y0 + m]


def draw_marker(image: np.ndarray) -> None:
    """Draw the ring into a float image in [0, 1] (before clipping and quantisation)."""
    x0, y0, x1, y1 = marker_box(image.shape[0])
    m = x1 - x0
    image[y0:y1, x0:x1] = 0.97
    k = max(1, m // 4)
    image[y0 + k : y1 - k, x0 + k : x1 - k] = 0.25


def marker_probability(strength: float, positive: bool) -> float:
    """P(marker | finding positive) = strength, P(marker | not) = 1 - strength (0.1 reverses 0.9)."""
    return strength if positive else 1.0 - strength
