"""kdistill classification metrics as an ``evaluate`` module (load it by path, offline):

    metric = evaluate.load("eval/metrics/classification_auc")
    metric.compute(predictions=probs, references=labels, thresholds=None, n_bootstrap=0)

``predictions``: per study the 14 probabilities (``kdistill.labels.FINDINGS`` order);
``references``: per study the 14 raw labels (1 / 0 / -1 / NaN). Returns the flat dict of
``eval.classification.classification_metrics``: per-finding, micro and macro AUC over 14 and 5
findings, F1 at the thresholds, bootstrap CIs, ECE, and named skips (uncertain labels left out by
default, blank = negative). This file only adapts; the one implementation is eval/classification.py.
"""
import datasets
import evaluate
import numpy as np

from eval.classification import classification_metrics

_CITATION = "Irvin et al., CheXpert (AAAI 2019): AUC over the 14 observations and the 5 competition findings."


class ClassificationAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description="predictions: list of 14 probabilities per study; references: list of 14 labels (1/0/-1/NaN).",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("float64")),
            }),
        )

    def _compute(self, predictions, references, thresholds=None, uncertain="ignore", blank="zeros",
                 n_bootstrap=0, seed=0):
        return classification_metrics(
            np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64),
            thresholds=thresholds, uncertain=uncertain, blank=blank, n_bootstrap=n_bootstrap, seed=seed)
