"""CIDEr-D as pycocoevalcap computes it, as an ``evaluate`` module (load it by path, offline):

    metric = evaluate.load("eval/metrics/cider_d")
    metric.compute(predictions=[...], references=[[...], ...])   # {"cider_d": mean score}

tf-idf over n-grams 1..4 with document frequencies from the references of the evaluated set,
clipped cosine, Gaussian length penalty (sigma 6), mean over n and references, x10, mean over
candidates. Scores need a corpus: with one candidate every n-gram's idf is 0. The one
implementation is ``eval.nlg.cider_d``.
"""
import datasets
import evaluate

from eval.nlg import cider_d

_CITATION = "Vedantam et al., CIDEr: Consensus-based Image Description Evaluation (CVPR 2015)."


class CiderD(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description="predictions: list of generated texts; references: per prediction a list of reference texts.",
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, sigma=6.0):
        return {"cider_d": cider_d(list(predictions), list(references), sigma=sigma)}
