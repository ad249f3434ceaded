"""Does a rationale agree with its study's labels? The rationale is labelled with a report labeler
(``label_reports`` by default); a finding is *mentioned* when its label is positive or uncertain
(1 or -1).

* :func:`is_consistent` — the verdict on one rationale (the rationale cache's ``consistent``
  column): it mentions every finding the study has as positive and none the study has as absent
  (0) or not mentioned (blank). The study's uncertain findings may go either way; "No Finding"
  is not judged.
* :func:`implied_findings` and :func:`is_consistent_implied` — the ``implied`` rule: as
  :func:`is_consistent`, but a finding the rationale names may also be one that a cause stated in
  the report brings (``kdistill/data/findings.yaml`` ``syndromes:``, e.g. "consistent with
  congestive heart failure" brings cardiomegaly, edema and effusion). Label files read from
  reports miss such findings (MIMIC's labeler does, and so does ours), and a teacher that knows
  the cause should not be flagged for naming them; a finding no stated cause brings still is.
* :func:`consistency_scores` — over many rationales: micro precision, recall and F1 of the
  findings the rationales mention against those the studies' labels mention, over the (n, 14)
  mentioned / not-mentioned matrices.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Callable, Sequence

import numpy as np

from kdistill.labels import FINDING_INDEX, NUM_FINDINGS

LabelFn = Callable[[Sequence[str]], np.ndarray]
_NOT_JUDGED = FINDING_INDEX["No Finding"]


def default_label_fn() -> LabelFn:
    """The project's rule-based labeler, with a clear error where it cannot be imported."""
    try:
        from kdistill.labeler import label_reports
    except ImportError as err:
        from kdistill.errors import DataError

        raise DataError(None, f"rationales are checked with kdistill.labeler.label_reports, which cannot be "
                              f"imported ({err})") from None
    return label_reports


def mentioned(labels: np.ndarray) -> np.ndarray:
    """1/0/-1/NaN labels -> boolean "mentioned" (1 or -1)."""
    labels = np.asarray(labels, dtype=np.float64)
    return (labels == 1.0) | (labels == -1.0)


def is_consistent(rationale_labels: Sequence[float], study_labels: Sequence[float]) -> bool:
    for i, (r, s) in enumerate(zip(rationale_labels, study_labels)):
        if i == _NOT_JUDGED:
            continue
        r = math.nan if r is None else float(r)
        s = math.nan if s is None else float(s)
        said = r == 1.0 or r == -1.0
        if s == 1.0 and not said:
            return False
        if (s == 0.0 or math.isnan(s)) and said:
            return False
    return True


def consistency_scores(rationale_labels: np.ndarray, study_labels: np.ndarray) -> dict[str, float]:
    """Micro precision / recall / F1 of the rationales' mentioned findings against the studies'."""
    said = mentioned(rationale_labels)
    truth = mentioned(study_labels)
    if said.shape != truth.shape or said.ndim != 2 or said.shape[1] != NUM_FINDINGS:
        raise ValueError(f"rationale labels {said.shape} and study labels {truth.shape} must both be (n, {NUM_FINDINGS})")
    tp = float(np.sum(said & truth))
    precision = tp / said.sum() if said.sum() else 0.0
    recall = tp / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


# A cue before the cause in its sentence: "no evidence of congestive heart failure" states none.
_NEGATED = re.compile(r"\b(no|not|without|negative for|free of|resolved|resolution of)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.;\n]+")


@functools.lru_cache(maxsize=1)
def _cause_patterns() -> tuple[tuple[re.Pattern, tuple[int, ...]], ...]:
    """(name pattern, finding indices it brings) per cause name and alias; acronyms match in capitals only."""
    from kdistill.data.phantom.knowledge import load_knowledge

    out = []
    for syndrome in load_knowledge().syndromes.values():
        brings = tuple(FINDING_INDEX[f] for f in syndrome.brings)
        for name in (syndrome.name, *syndrome.aliases):
            flags = 0 if name.isupper() else re.IGNORECASE
            out.append((re.compile(rf"\b{re.escape(name)}\b", flags), brings))
    return tuple(out)


def implied_findings(reports: Sequence[str]) -> np.ndarray:
    """(n, 14) bool: the findings brought by a cause each report states (findings.yaml ``syndromes:``,
    by name or alias), a cause counting only where no negation cue precedes it in its sentence."""
    out = np.zeros((len(reports), NUM_FINDINGS), dtype=bool)
    patterns = _cause_patterns()
    for r, text in enumerate(reports):
        for sentence in _SENTENCE.findall(text or ""):
            for pattern, brings in patterns:
                hit = pattern.search(sentence)
                if hit and not _NEGATED.search(sentence[: hit.start()]):
                    out[r, list(brings)] = True
    return out


def is_consistent_implied(rationale_labels: Sequence[float], study_labels: Sequence[float],
                          implied: Sequence[bool]) -> bool:
    """:func:`is_consistent` with the findings ``implied`` by the report's stated causes allowed to be named
    (never required: the label file, not the cause, says what the study must mention)."""
    # an implied finding the labels do not have as positive is treated as uncertain: it may go either way
    allowed = [(-1.0 if imp and s != 1.0 else s) for s, imp in zip(study_labels, implied)]
    return is_consistent(rationale_labels, allowed)
