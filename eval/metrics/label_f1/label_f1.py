"""Report label F1 (CheXbert-F1 style) as an ``evaluate`` module (load it by path, offline):

    metric = evaluate.load("eval/metrics/label_f1")
    metric.compute(predictions=generated_reports, references=reference_reports)   # texts
    metric.compute(predictions=gen_labels, references=ref_labels)                 # (n, 14) 1/0/-1/NaN

Texts are labelled by ``kdistill.labeler`` (CheXbert when ``chexbert_checkpoint`` is given, keys
``chexbert_f1/...``; else the rule-based labeler, keys ``chexpert_rules_f1/...``), with both
mappings: positive only and ``uncertain_positive`` (f1chexbert's "rrg" mode). Label arrays give
``micro_14``, ``macro_14``, ``micro_5``, ``macro_5`` and per-finding ``f1/<finding>`` for the mapping
chosen by ``uncertain_positive`` (or both, prefixed, when ``labeler_name`` says which labeler made
them). The one implementation is eval/label_f1.py.
"""
import datasets
import evaluate
import numpy as np

from eval.label_f1 import label_f1, report_label_metrics
from kdistill.labeler import get_labeler

_CITATION = "Smit et al., CheXbert (EMNLP 2020); f1chexbert (Delbrouck et al.) for the report-generation conventions."


class LabelF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description="predictions/references: generated/reference report texts, or their (n, 14) label rows.",
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }),
            ],
        )

    def _compute(self, predictions, references, uncertain_positive=False, labeler_name=None,
                 chexbert_checkpoint=None, chexbert_tokenizer=None):
        if len(predictions) and isinstance(predictions[0], str):
            label_fn, name = get_labeler(chexbert_checkpoint, chexbert_tokenizer)
            return report_label_metrics(list(predictions), list(references), label_fn, name)
        gen = np.asarray(predictions, dtype=np.float64)
        ref = np.asarray(references, dtype=np.float64)
        if labeler_name is not None:
            return report_label_metrics(gen, ref, None, labeler_name)
        return label_f1(gen, ref, uncertain_positive=uncertain_positive)
