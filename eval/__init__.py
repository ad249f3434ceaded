"""Evaluation: metrics (AUC, label F1, NLG, saliency benchmark) and reports."""
