"""Scoring shared by training and evaluation: ROC AUC, per-finding operating thresholds, and the
checkpoint's ``thresholds.json``.

One home, so the student's validation, its checkpoint and ``kdistill eval`` agree on the same
scores. ``eval.classification`` builds the full metric set (bootstrap, F1, calibration) on top.

AUC is the Mann-Whitney statistic (ties count one half), equal to
``sklearn.metrics.roc_auc_score``; micro-AUC pools every counted (study, finding) entry into one
ROC, macro-AUC averages the findings that have both classes.

Operating thresholds (``choose_thresholds``), predicting positive when p >= t; candidates are the
distinct validation scores. Two policies:

* ``"f1"`` (the default of ``choose_thresholds``): per finding, the t maximising F1 on validation.
  **Tie rule: among thresholds with the same F1 the highest wins** (fewest positive calls for the
  same F1, so fewer false alarms). On a small validation split it collapses for rare findings:
  with one or two positives scored low, calling every study positive is F1-optimal (the demo's 61
  validation studies gave Lung Lesion 0.011 and Enlarged Cardiomediastinum 0.010, so Lung Lesion
  was "found" in every explained study).
* ``"prevalence"`` (the student's default, ``StudentTrainConfig.threshold_policy``): the
  prevalence-matched point, the highest t that calls at least as many validation studies
  positive as are labelled positive (the k-th highest score, k = the counted positives). It
  depends only on how many positives there are, not on where one or two of them happen to rank,
  so it cannot collapse to calling every study: a finding is called about as often as it occurs
  (its threshold may still be a small number when the model gives a rare finding small
  probabilities; what it cannot do is sit below almost every study's score). Measured on a
  held-out phantom (1,000 studies, the demo checkpoint, 200 draws of 61 validation studies
  scored on the other 939, ``benchmarks/operating_points.py``): micro-F1 0.545 ± 0.018 against
  0.438 ± 0.045 for ``"f1"``, macro-F1 0.361 ± 0.014 against 0.369 ± 0.015, calls per
  labelled positive 0.98 against 2.05, findings called in more than half of the studies 0.0
  against 2.3.

A finding without a counted positive keeps ``default`` (0.5) under either policy and is named.

Decisions (``decide``): p >= t per finding, and "No Finding" made consistent with the others: it
is decided positive only when its own probability passes its threshold *and* no other finding
except Support Devices is decided positive (a device is not a pathology, as in CheXpert's
labeler, where No Finding ignores Support Devices).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from kdistill.errors import DataError
from kdistill.io import write_json
from kdistill.labels import FINDINGS, NUM_FINDINGS

THRESHOLDS_FILE = "thresholds.json"


def binary_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one binary problem; NaN when ``y`` has a single class."""
    y = np.asarray(y).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_summary(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``micro_auc`` over every counted entry, ``macro_auc`` over the findings with both classes
    (NaN when none), and ``auc_findings``, how many findings the macro mean covers."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    keep = np.asarray(mask) > 0
    micro = binary_auc(targets[keep], probs[keep])
    per = [binary_auc(targets[keep[:, c], c], probs[keep[:, c], c]) for c in range(probs.shape[1])]
    per = [a for a in per if not math.isnan(a)]
    return {"micro_auc": micro, "macro_auc": float(np.mean(per)) if per else math.nan, "auc_findings": len(per)}


def prevalence_baseline_auc(train_y: np.ndarray, train_mask: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Micro-AUC of scoring every study with each finding's training prevalence: what pooled
    micro-AUC gives for knowing prevalence alone (findings differ in it), to print beside a model's.
    NaN when the scored entries hold one class."""
    train_y, train_mask = np.asarray(train_y, dtype=np.float64), np.asarray(train_mask) > 0
    prevalence = (train_y * train_mask).sum(0) / np.maximum(train_mask.sum(0), 1)
    keep = np.asarray(mask) > 0
    return binary_auc(np.asarray(y)[keep], np.broadcast_to(prevalence, np.shape(y))[keep])


THRESHOLD_POLICIES = ("f1", "prevalence")
# Findings that do not stop "No Finding" from being decided positive (see ``decide``).
NOT_A_PATHOLOGY = ("Support Devices",)
POLICY_TEXT = {
    "f1": "per finding, the threshold maximising F1 on the validation split (ties: the highest)",
    "prevalence": "per finding, the prevalence-matched threshold: the highest that calls at least as many "
                  "validation studies positive as are labelled positive",
}
NO_FINDING_RULE = ("No Finding is decided positive only when its probability passes its threshold and no other "
                   "finding except Support Devices is decided positive")


def choose_thresholds(probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None,
                      default: float = 0.5, policy: str = "f1") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-finding thresholds by ``policy`` (``"f1"`` or ``"prevalence"``; see the module docstring).

    Returns (thresholds (14,), the F1 each reaches on validation (NaN where defaulted), the names
    of the findings that kept ``default`` because they have no counted positive).
    """
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"unknown threshold policy {policy!r}; known: {', '.join(THRESHOLD_POLICIES)}")
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    mask = np.ones(y.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if probs.shape != y.shape or probs.ndim != 2 or probs.shape[1] != NUM_FINDINGS:
        raise ValueError(f"probabilities {probs.shape} and targets {y.shape} must both be (n, {NUM_FINDINGS})")
    thresholds = np.full(NUM_FINDINGS, default, dtype=np.float64)
    best_f1 = np.full(NUM_FINDINGS, np.nan)
    defaulted: list[str] = []
    for j, finding in enumerate(FINDINGS):
        p, t = probs[mask[:, j], j], y[mask[:, j], j]
        if not t.any():
            defaulted.append(finding)
            continue
        order = np.argsort(-p, kind="stable")
        p_sorted, t_sorted = p[order], t[order]
        tp, fp = np.cumsum(t_sorted), np.cumsum(~t_sorted)
        last = np.r_[np.nonzero(np.diff(p_sorted))[0], p_sorted.size - 1]  # last index of each distinct score
        f1 = 2 * tp[last] / (2 * tp[last] + fp[last] + (t.sum() - tp[last]))
        if policy == "f1":
            best = int(np.flatnonzero(f1 == f1.max())[0])  # scores descend: the first is the highest threshold
        else:  # the highest threshold calling at least as many studies as are labelled positive
            best = int(np.flatnonzero(tp[last] + fp[last] >= t.sum())[0])
        thresholds[j], best_f1[j] = p_sorted[last[best]], f1[best]
    return thresholds, best_f1, defaulted


def decide(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Decisions (n, 14) bool: p >= t per finding, with "No Finding" positive only when no other
    finding except those in ``NOT_A_PATHOLOGY`` is decided positive (module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    if probs.ndim != 2 or probs.shape[1] != NUM_FINDINGS or thresholds.shape[1] != NUM_FINDINGS:
        raise ValueError(f"probabilities {probs.shape} and thresholds {thresholds.shape} need {NUM_FINDINGS} columns")
    decisions = probs >= thresholds
    nf = FINDINGS.index("No Finding")
    blocking = [j for j, f in enumerate(FINDINGS) if j != nf and f not in NOT_A_PATHOLOGY]
    decisions[:, nf] &= ~decisions[:, blocking].any(axis=1)
    return decisions


def save_thresholds(out_dir: str | Path, thresholds: np.ndarray, **extra: Any) -> Path:
    """``out_dir/thresholds.json``: {"findings": [...14], "thresholds": [...14], **extra}."""
    values = [float(t) for t in np.asarray(thresholds, dtype=np.float64)]
    if len(values) != NUM_FINDINGS or not all(math.isfinite(v) for v in values):
        raise ValueError(f"need {NUM_FINDINGS} finite thresholds, got {values}")
    path = Path(out_dir) / THRESHOLDS_FILE
    write_json(path, {"findings": list(FINDINGS), "thresholds": values, **extra})
    return path


def read_thresholds(folder: str | Path) -> np.ndarray | None:
    """A folder's ``thresholds.json`` as 14 floats in ``FINDINGS`` order, or None when it has none.

    Accepted forms: the file :func:`save_thresholds` writes, ``{finding: t}``, or a list of 14.
    Anything else (not JSON, a wrong count, a non-number) is a ``DataError`` naming the file.
    """
    path = Path(folder) / THRESHOLDS_FILE
    data = _read_json(path)
    if data is None:
        return None
    if isinstance(data, dict) and "thresholds" in data:
        names = data.get("findings")
        data = data["thresholds"]
        if names is not None and isinstance(data, list) and list(names) != list(FINDINGS):
            raise DataError(path, "its 'findings' are not the 14 findings in kdistill.labels.FINDINGS order")
    if isinstance(data, dict):
        missing = [f for f in FINDINGS if f not in data]
        if missing:
            raise DataError(path, f"no threshold for {', '.join(missing)}")
        data = [data[f] for f in FINDINGS]
    if not isinstance(data, list) or len(data) != NUM_FINDINGS:
        raise DataError(path, f"expected {{finding: threshold}} or a list of {NUM_FINDINGS} thresholds")
    try:
        values = np.array([float(v) for v in data])
    except (TypeError, ValueError):
        raise DataError(path, f"thresholds must be numbers, got {data}") from None
    if not np.isfinite(values).all():
        raise DataError(path, "thresholds must be finite numbers")
    return values


def thresholds_info(folder: str | Path) -> dict[str, Any] | None:
    """Everything a folder's ``thresholds.json`` says besides the values (``policy``, ``chosen_on``,
    ``n_studies``, ``defaulted``, ``f1``), for the pages and the model card; None when it has no
    such file or the file is the bare-list form. Files written before ``policy`` existed were
    F1-optimal: read them as ``policy: "f1"``."""
    data = _read_json(Path(folder) / THRESHOLDS_FILE)
    if not isinstance(data, dict) or "thresholds" not in data:
        return None
    return {"policy": "f1", **data}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"not valid JSON: {err}") from None
