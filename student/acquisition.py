"""Acquisition functions of ``kdistill student active``: each turns the student's outputs on the
pool into one score per study, higher = acquire first. Pure functions on arrays (tested on
hand-made values).

* ``entropy``: the mean over findings of the binary entropy (nats) of the predicted probability.
* ``bald``: from T stochastic (MC-dropout) passes, H(mean_t p_t) - mean_t H(p_t) per finding
  (the mutual information between the prediction and the weights; Houlsby et al., 2011),
  averaged over findings.
* ``misalignment``: 1 - the soft Dice of the student's Grad-CAM map with the expert region,
  averaged over the study's findings that have a region.
* ``rank_normalise``: scores -> their ranks scaled to [0, 1] (ties share their mean rank), so
  scores on different scales can be mixed.
* ``xgal``: lambda * rank(uncertainty) + (1 - lambda) * rank(misalignment).
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-12


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Elementwise H(p) = -p ln p - (1 - p) ln(1 - p), in nats (0 at p = 0 or 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """(P, F) probabilities -> (P,) mean binary entropy over findings."""
    return binary_entropy(probs).mean(-1)


def bald_scores(samples: np.ndarray) -> np.ndarray:
    """(T, P, F) probabilities of T stochastic passes -> (P,) BALD, mean over findings."""
    samples = np.asarray(samples, dtype=np.float64)
    return (binary_entropy(samples.mean(0)) - binary_entropy(samples).mean(0)).mean(-1)


def soft_dice(maps: np.ndarray, masks: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(B, ...) maps and masks in [0, 1] -> (B,) (2 sum(m r) + eps) / (sum m + sum r + eps), the
    Dice that ``student.losses.soft_dice_loss`` is 1 minus."""
    m = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    r = np.asarray(masks, dtype=np.float64).reshape(len(masks), -1)
    return (2 * (m * r).sum(1) + eps) / (m.sum(1) + r.sum(1) + eps)


def rank_normalise(scores: np.ndarray) -> np.ndarray:
    """Ranks (average for ties) mapped to [0, 1]: the lowest 0, the highest 1; one score gives 0.5."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) <= 1:
        return np.full(len(scores), 0.5)
    return (rankdata(scores, method="average") - 1) / (len(scores) - 1)


def misalignment_ranks(misalignment: np.ndarray, has_region: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rank-normalised misalignment over the studies with a region; the studies without one take
    the rank-normalised ``fallback`` score (the student's uncertainty) in its place."""
    has_region = np.asarray(has_region, dtype=bool)
    out = rank_normalise(fallback).astype(np.float64)
    if has_region.any():
        out[has_region] = rank_normalise(np.asarray(misalignment)[has_region])
    return out


def xgal_scores(uncertainty: np.ndarray, misalignment_rank: np.ndarray, lam: float) -> np.ndarray:
    """lam * rank(uncertainty) + (1 - lam) * misalignment ranks (already in [0, 1])."""
    return lam * rank_normalise(uncertainty) + (1 - lam) * np.asarray(misalignment_rank, dtype=np.float64)


def select_top(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``k`` highest scores; ties broken by a seeded random order."""
    scores = np.asarray(scores, dtype=np.float64)
    tiebreak = rng.permutation(len(scores))
    order = np.lexsort((tiebreak, -scores))
    return order[:k]
