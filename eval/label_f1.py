"""Clinical efficacy of generated reports: label F1 between the labels a report labeler assigns to
the generated report and to the reference report.

Conventions (as the report-generation literature computes CheXbert F1, e.g. the ``f1chexbert``
package): both generated and reference reports go through the *same* labeler; each of the 14
findings becomes a binary column; F1 is ``sklearn.metrics.f1_score`` over the (n, 14) binary
matrices with ``average="micro"`` (pooled counts) or ``average="macro"`` (mean of per-finding F1),
and the same over the five CheXpert competition findings (Atelectasis, Cardiomegaly,
Consolidation, Edema, Pleural Effusion). "No Finding" is one of the 14 columns, as in f1chexbert.
A finding with no positive in either matrix has F1 0 in the macro mean (sklearn's zero division,
which f1chexbert's ``classification_report`` also uses); such findings are named in the output
under ``<name>/no_positives/<finding>`` so a low macro score can be read.

Two mappings of the labeler's 1 / 0 / -1 / NaN to binary:

* default ("positive only"): 1 -> positive; 0, -1 and blank -> negative;
* ``uncertain_positive`` (f1chexbert's default ``mode="rrg"``): 1 and -1 -> positive; 0 and
  blank -> negative.

The metric name is the labeler's: ``chexbert_f1`` when the CheXbert checkpoint was given,
``chexpert_rules_f1`` for the project's rule-based labeler (see
``kdistill.labeler.chexbert.get_labeler``); the two are never mixed in one result.

Rationale consistency (a rationale against its study's labels) lives with the labeler:
``kdistill.labeler.consistency``.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
from sklearn.metrics import f1_score

from kdistill.labels import COMPETITION_INDICES, FINDINGS, NUM_FINDINGS

LabelFn = Callable[[Sequence[str]], np.ndarray]
ReportsOrLabels = Union[Sequence[str], np.ndarray]


def binarize(labels: np.ndarray, uncertain_positive: bool = False) -> np.ndarray:
    """1/0/-1/NaN report labels -> 0/1 ints (see the module docstring for the two mappings)."""
    labels = np.asarray(labels, dtype=np.float64)
    positive = labels == 1.0
    if uncertain_positive:
        positive |= labels == -1.0
    return positive.astype(np.int64)


def as_label_matrix(items: ReportsOrLabels, label_fn: LabelFn | None, what: str) -> np.ndarray:
    """Texts (labelled with ``label_fn``) or a precomputed (n, 14) label array -> (n, 14) float array."""
    if isinstance(items, np.ndarray) and items.dtype.kind in "fiu":
        matrix = items.astype(np.float64)
    elif len(items) and not isinstance(items[0], str):
        matrix = np.asarray(items, dtype=np.float64)
    else:
        if label_fn is None:
            raise ValueError(f"{what}: texts given but no labeler")
        matrix = np.asarray(label_fn(list(items)), dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != NUM_FINDINGS:
        raise ValueError(f"{what}: labels must have shape (n, {NUM_FINDINGS}), got {matrix.shape}")
    bad = ~(np.isnan(matrix) | np.isin(matrix, (1.0, 0.0, -1.0)))
    if bad.any():
        raise ValueError(f"{what}: labels must be 1, 0, -1 or NaN; found {matrix[bad][0]!r}")
    return matrix


def label_f1(
    generated: ReportsOrLabels,
    reference: ReportsOrLabels,
    label_fn: LabelFn | None = None,
    uncertain_positive: bool = False,
) -> dict[str, float | str]:
    """micro/macro F1 over 14 and 5 findings, and F1 per finding. Reports or label arrays."""
    gen = binarize(as_label_matrix(generated, label_fn, "generated"), uncertain_positive)
    ref = binarize(as_label_matrix(reference, label_fn, "reference"), uncertain_positive)
    if gen.shape != ref.shape:
        raise ValueError(f"generated labels {gen.shape} and reference labels {ref.shape} differ in shape")
    if gen.shape[0] == 0:
        raise ValueError("no reports to score")
    out: dict[str, float | str] = {}
    for name, cols in (("14", list(range(NUM_FINDINGS))), ("5", list(COMPETITION_INDICES))):
        for average in ("micro", "macro"):
            out[f"{average}_{name}"] = float(f1_score(ref[:, cols], gen[:, cols], average=average, zero_division=0))
    per = f1_score(ref, gen, average=None, zero_division=0)
    for j, finding in enumerate(FINDINGS):
        out[f"f1/{finding}"] = float(per[j])
        if not ref[:, j].any() and not gen[:, j].any():
            out[f"no_positives/{finding}"] = "no positive in generated or reference reports (F1 0 in the macro mean)"
    return out


def report_label_metrics(
    generated: ReportsOrLabels, reference: ReportsOrLabels, label_fn: LabelFn | None, metric_name: str
) -> dict[str, float | str]:
    """Both mappings under one labeler's name: ``<metric_name>/micro_14`` (positive only) and
    ``<metric_name>/uncertain_positive/micro_14`` (-1 counts as positive), and so on."""
    if metric_name not in ("chexbert_f1", "chexpert_rules_f1"):
        raise ValueError(f"metric name must be 'chexbert_f1' or 'chexpert_rules_f1', got {metric_name!r}")
    gen = as_label_matrix(generated, label_fn, "generated")  # label once, score twice
    ref = as_label_matrix(reference, label_fn, "reference")
    out: dict[str, float | str] = {}
    for variant, uncertain_positive in (("", False), ("uncertain_positive/", True)):
        for key, value in label_f1(gen, ref, uncertain_positive=uncertain_positive).items():
            out[f"{metric_name}/{variant}{key}"] = value
    return out
