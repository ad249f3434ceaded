"""Classification metrics over the 14 findings: AUC (per finding, micro, macro), F1 at operating
points chosen on validation, bootstrap confidence intervals and calibration.

Which label values count (targets via :func:`kdistill.labels.apply_policy`):

* positive (1) -> 1; negative (0) -> 0;
* uncertain (-1) -> left out of every metric by default (``uncertain="ignore"``); "ones"/"zeros"
  count it as positive/negative;
* blank / not mentioned (NaN) -> negative by default (``blank="zeros"``: not mentioned = absent,
  the usual reading of MIMIC-CXR's CheXpert labels); ``blank="ignore"`` leaves it out.

Micro-AUC is one ROC over every counted (study, finding) entry flattened together — exactly
``sklearn.metrics.roc_auc_score(y[mask], p[mask])``, which equals ``average="micro"`` when nothing is
masked. Macro-AUC is the mean of the per-finding AUCs over the findings that have both classes
among their counted entries; a finding with a single class is *skipped and named* (never a NaN in
the mean). "_14" is over the 14 findings, "_5" over the five CheXpert competition findings.

Every function returns a flat ``dict``: numbers under names ("auc_micro_14", "auc/Edema",
"f1_macro_5", "auc_micro_14_ci_low", ...) and skips under "skipped/<metric>/<finding>" with the
reason as a string, so callers can prefix a split and write them straight to metrics.json.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kdistill.labels import COMPETITION_INDICES, FINDINGS, NUM_FINDINGS, apply_policy
from kdistill.scoring import binary_auc

SINGLE_CLASS = "single class"
ALL_SUBSETS = {"14": tuple(range(NUM_FINDINGS)), "5": tuple(COMPETITION_INDICES)}


def targets(labels: np.ndarray, uncertain: str = "ignore", blank: str = "zeros") -> tuple[np.ndarray, np.ndarray]:
    """Raw report labels (1/0/-1/NaN) -> (binary targets, boolean mask of the entries that count)."""
    y, mask = apply_policy(np.asarray(labels, dtype=np.float32), uncertain=uncertain, blank=blank)  # type: ignore[arg-type]
    return y.astype(np.int8), mask.astype(bool)


def _check(probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim != 2 or probs.shape[1] != NUM_FINDINGS:
        raise ValueError(f"probabilities must have shape (n, {NUM_FINDINGS}), got {probs.shape}")
    if y.shape != probs.shape:
        raise ValueError(f"targets shape {y.shape} differs from probabilities shape {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or inf")
    mask = np.ones(y.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    return probs, y.astype(bool), mask


def _aucs(probs: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Per-finding AUCs (NaN where single class) and the micro/macro summaries (NaN-free)."""
    per = np.array([binary_auc(y[mask[:, j], j], probs[mask[:, j], j]) for j in range(NUM_FINDINGS)])
    out: dict[str, float] = {}
    for name, cols in ALL_SUBSETS.items():
        cols_ = list(cols)
        micro = binary_auc(y[:, cols_][mask[:, cols_]], probs[:, cols_][mask[:, cols_]])
        if not np.isnan(micro):
            out[f"auc_micro_{name}"] = micro
        valid = per[cols_][~np.isnan(per[cols_])]
        if valid.size:
            out[f"auc_macro_{name}"] = float(valid.mean())
    return per, out


def auc_metrics(probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float | str]:
    """Per-finding, micro and macro AUC over 14 and over 5 findings, with named skips."""
    probs, y, mask = _check(probs, y, mask)
    per, summary = _aucs(probs, y, mask)
    out: dict[str, float | str] = {}
    for j, finding in enumerate(FINDINGS):
        if np.isnan(per[j]):
            out[f"skipped/auc/{finding}"] = SINGLE_CLASS if mask[:, j].any() else "no counted labels"
        else:
            out[f"auc/{finding}"] = float(per[j])
    for name in ALL_SUBSETS:
        for kind in ("micro", "macro"):
            key = f"auc_{kind}_{name}"
            if key in summary:
                out[key] = summary[key]
            else:
                out[f"skipped/{key}"] = SINGLE_CLASS
    return out


class _ResampledAuc:
    """AUC of one fixed set of (study, score, target) entries under study weights.

    A bootstrap resample that draws study i k times is the same as weighting its entries by k,
    so the scores are sorted once and each resample costs two weighted counts (no re-sorting):
    AUC = sum over tie groups of w_pos * (w_neg below + w_neg tied / 2) / (W_pos * W_neg) — the
    Mann-Whitney statistic of the resampled data, exactly.
    """

    def __init__(self, rows: np.ndarray, scores: np.ndarray, y: np.ndarray):
        order = np.argsort(scores, kind="mergesort")
        sorted_scores, rows, pos = scores[order], rows[order], y[order].astype(bool)
        group = np.r_[0, np.cumsum(sorted_scores[1:] != sorted_scores[:-1])] if scores.size else np.zeros(0, int)
        self.n_groups = int(group[-1]) + 1 if scores.size else 0
        self.pos_rows, self.pos_group = rows[pos], group[pos]
        self.neg_rows, self.neg_group = rows[~pos], group[~pos]

    def __call__(self, study_weights: np.ndarray) -> float:
        wp = np.bincount(self.pos_group, weights=study_weights[self.pos_rows], minlength=self.n_groups)
        wn = np.bincount(self.neg_group, weights=study_weights[self.neg_rows], minlength=self.n_groups)
        total_p, total_n = wp.sum(), wn.sum()
        if total_p == 0 or total_n == 0:
            return float("nan")
        below = np.cumsum(wn) - wn
        return float(np.dot(wp, below + 0.5 * wn) / (total_p * total_n))


def bootstrap_auc_ci(
    probs: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | str]:
    """Percentile bootstrap CIs for micro/macro AUC (14 and 5), resampling studies (rows) with replacement.

    A resample in which a summary is undefined (a single class everywhere) is left out of that
    summary's interval; the number of resamples used is reported ("..._ci_n").
    """
    probs, y, mask = _check(probs, y, mask)
    if n_bootstrap <= 0:
        return {}
    n = probs.shape[0]
    rows_of = np.broadcast_to(np.arange(n)[:, None], probs.shape)
    per = [_ResampledAuc(rows_of[mask[:, j], j], probs[mask[:, j], j], y[mask[:, j], j]) for j in range(NUM_FINDINGS)]
    micro = {}
    for name, cols in ALL_SUBSETS.items():
        sub = np.zeros_like(mask)
        sub[:, list(cols)] = mask[:, list(cols)]
        micro[name] = _ResampledAuc(rows_of[sub], probs[sub], y[sub])
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {f"auc_{k}_{s}": [] for s in ALL_SUBSETS for k in ("micro", "macro")}
    for _ in range(n_bootstrap):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        aucs = np.array([auc(weights) for auc in per])
        for name, cols in ALL_SUBSETS.items():
            value = micro[name](weights)
            if not np.isnan(value):
                draws[f"auc_micro_{name}"].append(value)
            valid = aucs[list(cols)][~np.isnan(aucs[list(cols)])]
            if valid.size:
                draws[f"auc_macro_{name}"].append(float(valid.mean()))
    alpha = (1.0 - level) / 2.0
    out: dict[str, float | str] = {}
    for key, values in draws.items():
        if not values:
            out[f"skipped/{key}_ci"] = "no resample with both classes"
            continue
        low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
        out[f"{key}_ci_low"] = float(low)
        out[f"{key}_ci_high"] = float(high)
        out[f"{key}_ci_n"] = float(len(values))
    return out


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum(y & pred))
    denom = float(np.sum(y) + np.sum(pred))
    return 2 * tp / denom if denom else 0.0  # zero_division=0, as sklearn's f1_score(zero_division=0)


def f1_metrics(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None, thresholds: Sequence[float] | np.ndarray | None = None
) -> dict[str, float | str]:
    """F1 per finding at ``thresholds`` (default 0.5), micro (pooled counts) and macro over 14 and 5.

    A finding with no counted positive is left out of the macro mean and named under "skipped/f1/".
    """
    probs, y, mask = _check(probs, y, mask)
    t = np.full(NUM_FINDINGS, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if t.shape != (NUM_FINDINGS,):
        raise ValueError(f"need {NUM_FINDINGS} thresholds, got shape {t.shape}")
    pred = probs >= t[None, :]
    out: dict[str, float | str] = {}
    per = np.full(NUM_FINDINGS, np.nan)
    for j, finding in enumerate(FINDINGS):
        m = mask[:, j]
        if not y[m, j].any():
            out[f"skipped/f1/{finding}"] = "no positives"
            continue
        per[j] = _f1(y[m, j], pred[m, j])
        out[f"f1/{finding}"] = float(per[j])
    for name, cols in ALL_SUBSETS.items():
        cols_ = list(cols)
        m = mask[:, cols_]
        if not y[:, cols_][m].any():
            out[f"skipped/f1_micro_{name}"] = "no positives"
        else:
            out[f"f1_micro_{name}"] = _f1(y[:, cols_][m], pred[:, cols_][m])
        valid = per[cols_][~np.isnan(per[cols_])]
        if valid.size:
            out[f"f1_macro_{name}"] = float(valid.mean())
        else:
            out[f"skipped/f1_macro_{name}"] = "no positives"
    return out


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None, bins: int = 10) -> float:
    """ECE over every counted entry pooled: sum over equal-width bins of |accuracy - confidence| x share."""
    probs, y, mask = _check(probs, y, mask)
    p, t = probs[mask], y[mask].astype(np.float64)
    if p.size == 0:
        return float("nan")
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(t[sel].mean() - p[sel].mean())
    return float(ece)


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] | np.ndarray | None = None,
    uncertain: str = "ignore",
    blank: str = "zeros",
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, float | str]:
    """Every classification metric of one split, flat: AUCs (+ CIs when ``n_bootstrap`` > 0),
    F1 at ``thresholds``, ECE and the counts they rest on. ``labels`` are raw 1/0/-1/NaN."""
    y, mask = targets(labels, uncertain=uncertain, blank=blank)
    out: dict[str, float | str] = {"n_studies": float(np.asarray(probs).shape[0]), "n_counted_labels": float(mask.sum())}
    out.update(auc_metrics(probs, y, mask))
    out.update(bootstrap_auc_ci(probs, y, mask, n_bootstrap=n_bootstrap, seed=seed))
    out.update(f1_metrics(probs, y, mask, thresholds))
    ece = expected_calibration_error(probs, y, mask)
    if np.isnan(ece):
        out["skipped/ece"] = "no counted labels"
    else:
        out["ece"] = ece
    return out
