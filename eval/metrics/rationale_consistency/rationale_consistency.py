"""Rationale consistency as an ``evaluate`` module (load it by path, offline):

    metric = evaluate.load("eval/metrics/rationale_consistency")
    metric.compute(predictions=rationale_labels, references=study_labels)   # (n, 14) 1/0/-1/NaN each

A finding counts as mentioned when its label is 1 or -1; returns micro precision, recall and F1 of
the rationale's mentioned findings against the study's. Rationale texts can be given instead of
label rows (``predictions`` as strings) and are then labelled by ``kdistill.labeler``. The one
implementation is ``kdistill.labeler.consistency.consistency_scores``.
"""
import datasets
import evaluate
import numpy as np

from kdistill.labeler import get_labeler
from kdistill.labeler.consistency import consistency_scores


class RationaleConsistency(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: rationale texts or their 14 labels; references: the study's 14 labels.",
            features=[
                datasets.Features({
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }),
                datasets.Features({
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }),
            ],
        )

    def _compute(self, predictions, references, chexbert_checkpoint=None, chexbert_tokenizer=None):
        if len(predictions) and isinstance(predictions[0], str):
            label_fn, _ = get_labeler(chexbert_checkpoint, chexbert_tokenizer)
            predictions = label_fn(list(predictions))
        return consistency_scores(np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64))
