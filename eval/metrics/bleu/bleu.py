"""Corpus BLEU-1..4 as pycocoevalcap computes it, as an ``evaluate`` module (load it by path, offline):

    metric = evaluate.load("eval/metrics/bleu")
    metric.compute(predictions=["the heart is normal"], references=[["the heart is normal"]])
    # {"bleu_1": 1.0, ..., "bleu_4": 1.0}

PTB-style tokenisation with punctuation dropped, clipped n-gram counts summed over the corpus,
closest reference length and one corpus-level brevity penalty. ``references``: per candidate a
list of reference strings. The one implementation is ``eval.nlg.bleu``.
"""
import datasets
import evaluate

from eval.nlg import bleu

_CITATION = "Papineni et al., BLEU (ACL 2002); Chen et al., Microsoft COCO Captions evaluation server (2015)."


class Bleu(evaluate.Metric):
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

    def _compute(self, predictions, references, max_order=4):
        scores = bleu(list(predictions), list(references), n=max_order)
        return {f"bleu_{k + 1}": s for k, s in enumerate(scores)}
