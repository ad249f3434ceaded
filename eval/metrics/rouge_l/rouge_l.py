"""ROUGE-L as pycocoevalcap computes it, as an ``evaluate`` module (load it by path, offline):

    metric = evaluate.load("eval/metrics/rouge_l")
    metric.compute(predictions=[...], references=[[...], ...])   # {"rouge_l": mean F}

Per candidate: LCS precision and recall (maxima over references), F with beta = 1.2; the corpus
score is the mean over candidates. The one implementation is ``eval.nlg.rouge_l``.
"""
import datasets
import evaluate

from eval.nlg import rouge_l

_CITATION = "Lin, ROUGE (2004); Chen et al., Microsoft COCO Captions evaluation server (2015)."


class RougeL(evaluate.Metric):
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

    def _compute(self, predictions, references, beta=1.2):
        return {"rouge_l": rouge_l(list(predictions), list(references), beta=beta)}
