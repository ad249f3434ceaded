"""The rule-based CheXpert-style report labeler, and the optional CheXbert path.

``label_reports(texts) -> (n, 14) float32`` and ``label_report(text) -> (14,)`` give 1 / 0 /
-1 / NaN (blank) in ``kdistill.labels.FINDINGS`` order; ``mentions(text)`` lists each mention
with its decision and span.  The module-level functions share one cached ``Labeler``.
``get_labeler`` picks CheXbert when a checkpoint is given (see ``chexbert.py``).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

from kdistill.labeler.rules import Labeler, Mention, aggregate

__all__ = ["Labeler", "Mention", "aggregate", "default_labeler", "label_report", "label_reports", "mentions", "get_labeler"]


@functools.lru_cache(maxsize=1)
def default_labeler() -> Labeler:
    """The labeler built from the packaged lists (compiled once per process)."""
    return Labeler()


def label_reports(texts: Sequence[str]) -> np.ndarray:
    return default_labeler().label_reports(texts)


def label_report(text: str) -> np.ndarray:
    return default_labeler().label_report(text)


def mentions(text: str) -> list[Mention]:
    return default_labeler().mentions(text)


def get_labeler(
    chexbert_checkpoint: str | None = None,
    chexbert_tokenizer: str | None = None,
    device: str = "cpu",
    chexbert_config=None,
) -> tuple[Callable[[Sequence[str]], np.ndarray], str]:
    """-> (label_fn, metric_name).  CheXbert when a checkpoint is given ("chexbert_f1"),
    otherwise the rule-based labeler ("chexpert_rules_f1"); the names are never mixed.
    ``chexbert_config``: BERT geometry (BertConfig, dict or config.json path); None is
    bert-base-uncased, which the published checkpoint uses."""
    if chexbert_checkpoint:
        if not chexbert_tokenizer:
            raise ValueError("a CheXbert checkpoint needs its tokenizer directory too (chexbert_tokenizer)")
        from kdistill.labeler.chexbert import CheXbertLabeler

        model = CheXbertLabeler(chexbert_checkpoint, chexbert_tokenizer, bert_config=chexbert_config, device=device)
        return model.label_reports, "chexbert_f1"
    return label_reports, "chexpert_rules_f1"
