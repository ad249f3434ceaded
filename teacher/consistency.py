"""Is a rationale consistent with its study's labels? (the ``consistent`` column)

The rationale is labelled with the project's CheXpert-style labeler; it is consistent when it
mentions (positive or uncertain) every finding the study has as positive, and none the study
has as absent (0) or not mentioned (blank). The study's uncertain findings may go either way;
"No Finding" is ignored.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX

LabelFn = Callable[[Sequence[str]], np.ndarray]
_SKIP = FINDING_INDEX["No Finding"]


def is_consistent(rationale_labels: Sequence[float], study_labels: Sequence[float]) -> bool:
    for i, (r, s) in enumerate(zip(rationale_labels, study_labels)):
        if i == _SKIP:
            continue
        r = math.nan if r is None else float(r)
        s = math.nan if s is None else float(s)
        mentioned = r == 1.0 or r == -1.0
        if s == 1.0 and not mentioned:
            return False
        if (s == 0.0 or math.isnan(s)) and mentioned:
            return False
    return True


def default_label_fn() -> LabelFn:
    """The project's labeler (``kdistill.labeler.label_reports``), with a clear error if absent."""
    try:
        from kdistill.labeler import label_reports
    except ImportError as err:
        raise DataError(None, "teacher generate checks each rationale with kdistill.labeler.label_reports, "
                              f"which cannot be imported ({err})") from None
    return label_reports
