"""The kdistill metrics as ``evaluate`` modules, one folder each, loaded by local path (offline):

    import evaluate
    from eval.metrics import metric_path
    auc = evaluate.load(metric_path("classification_auc"))

Each module only adapts inputs; the implementations live in eval/classification.py,
eval/label_f1.py and eval/nlg.py. The folders are packages only so that a wheel ships them.
"""
from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
NAMES = ("classification_auc", "label_f1", "rationale_consistency", "bleu", "rouge_l", "cider_d")


def metric_path(name: str) -> str:
    """The folder to pass to ``evaluate.load`` for metric ``name``."""
    if name not in NAMES:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(NAMES)}")
    return str(METRICS_DIR / name)
