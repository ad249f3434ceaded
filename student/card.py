"""The student checkpoint's model card: ``README.md`` in the checkpoint folder, written by
``student.train.finish`` from what the run measured (nothing here is typed in by hand).

It says what the model is, what it was trained on, with which config, the validation figures
(with a constant-prevalence baseline beside the micro-AUC), the operating points and their
policy, and that its output is research output, not a diagnosis.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from kdistill import scoring
from kdistill.io import write_text_atomic
from kdistill.labels import FINDINGS

CARD = "README.md"
RESEARCH_USE = ("**Research model output, not a diagnosis.** This checkpoint is a research artefact of kdistill: "
                "it has not been validated for clinical use and must not be used to diagnose, treat or triage "
                "patients. Its reports, rationales and saliency maps are model output for research on explainable "
                "chest X-ray AI.")


def write_model_card(out_dir: str | Path, cfg, model_cfg, metrics: dict[str, Any], train=None, validate=None) -> Path:
    """Write ``out_dir/README.md``. ``train``/``validate`` are the run's ``StudyDataset`` splits
    (their ``targets``/``target_mask`` give the label counts); thresholds come from the folder's
    ``thresholds.json`` when it has one."""
    out_dir = Path(out_dir)
    thresholds = scoring.thresholds_info(out_dir)
    lines = ["# kdistill student checkpoint", "", f"> {RESEARCH_USE}", ""]
    lines += _what_it_is(model_cfg)
    lines += _trained_on(cfg, metrics, train, validate)
    lines += _validation(metrics, train, validate)
    lines += _operating_points(thresholds, train)
    lines += ["## Use", "", "```python", "import student", f'model = student.load("{out_dir}")',
              "out = model.predict(images)  # probs, decisions, reports, rationales, maps", "```", "",
              f"`kdistill explain {out_dir} --images a.png b.dcm --out explained/` writes explained reports "
              "(HTML pages with the decisions, the rule behind them and the saliency maps).", "",
              "## Limitations", "",
              "* The validation figures come from the split that chose the best step and the thresholds, so "
              "they are optimistic; `kdistill eval` scores the held-out test split.",
              "* Labels and reference reports are those of the training data (CheXpert-style labels from "
              "reports), not radiologist reads of the images.",
              "* The saliency maps are the model's class-query attention: where the finding query looked, "
              "not proof of what drove the probability.", ""]
    path = out_dir / CARD
    write_text_atomic(path, "\n".join(lines))
    return path


def _what_it_is(model_cfg) -> list[str]:
    overrides = ", ".join(f"{k}={v}" for k, v in (model_cfg.vision_overrides or {}).items())
    return ["## What it is", "",
            f"* Vision tower: open_clip `{model_cfg.vision_model}`" + (f" ({overrides})" if overrides else "")
            + f", pretrained weights: {model_cfg.vision_pretrained or 'none (trained from scratch)'}.",
            f"* Finding heads: 14 class queries ({model_cfg.head_layers} layer(s), width {model_cfg.head_width}); "
            "their attention over the image patches gives one map per finding.",
            f"* Report decoder: CoCa-style, width {model_cfg.decoder_width}, {model_cfg.text_layers} text + "
            f"{model_cfg.multimodal_layers} multimodal layers, at most {model_cfg.max_text_len} tokens per text; "
            f"report context: {model_cfg.report_context}.",
            "* Files: `config.json` (architecture), `model.safetensors`, tokenizer files, `thresholds.json`, "
            "`metrics.json`, `training_config.json` (every training knob).", ""]


def _trained_on(cfg, metrics: dict[str, Any], train, validate) -> list[str]:
    rat = metrics.get("rationales") or {}
    loss = ", ".join(f"{k} {v:g}" for k, v in cfg.loss.terms().items())
    out = ["## Trained on", "",
           f"* {_count(train)} training studies, {_count(validate)} validation studies (the prepared cache's "
           f"`train` and `validate` splits); uncertain labels: {cfg.uncertain}, blank labels: {cfg.blank}."]
    if rat:
        out.append(f"* Teacher rationales: {rat.get('with_rationale')} of {rat.get('studies')} training studies "
                   f"({rat.get('inconsistent_left_out_in_cache', 0)} inconsistent rationales left out); "
                   f"tokenizer checked by {metrics.get('tokenizer_check')}.")
    out += [f"* Loss weights: {loss}.",
            f"* {metrics.get('steps')} optimizer steps (best at {metrics.get('best_step')}), batch {cfg.batch_size} "
            f"x {metrics.get('num_processes', 1)} process(es), lr {cfg.lr:g}, augmentation "
            f"{'on' if cfg.augment.enabled else 'off'}, {metrics.get('wall_s')} s, "
            f"{metrics.get('images_per_s')} images/s.", ""]
    return out


def _validation(metrics: dict[str, Any], train, validate) -> list[str]:
    v = metrics.get("validation") or {}
    baseline = _prevalence_baseline(train, validate)
    return ["## Validation figures", "", "| figure | value |", "| --- | --- |",
            f"| loss | {_fmt(v.get('loss'))} |",
            f"| micro-AUC, 14 findings | {_fmt(v.get('micro_auc'))} |",
            f"| micro-AUC of a constant-prevalence predictor (training prevalence per finding) | {_fmt(baseline)} |",
            f"| macro-AUC ({v.get('auc_findings')} findings with both classes) | {_fmt(v.get('macro_auc'))} |", ""]


def _operating_points(thresholds: dict[str, Any] | None, train) -> list[str]:
    if not thresholds:
        return ["## Operating points", "", "No `thresholds.json`: every finding is decided at 0.5.", ""]
    policy = thresholds.get("policy", "f1")
    positives = _positives(train)
    out = ["## Operating points", "",
           f"Chosen on the {thresholds.get('chosen_on', 'validate')} split ({thresholds.get('n_studies', '?')} "
           f"studies): {scoring.POLICY_TEXT.get(policy, policy)}. A finding is decided positive when its "
           f"probability is at least its threshold; {scoring.NO_FINDING_RULE}.", "",
           "| finding | threshold | validation F1 at it | training positives |", "| --- | --- | --- | --- |"]
    f1 = thresholds.get("f1") or [None] * len(FINDINGS)
    for j, name in enumerate(FINDINGS):
        kept = " (kept 0.5: no validation positive)" if name in (thresholds.get("defaulted") or []) else ""
        count = "" if positives is None else str(int(positives[j]))
        out.append(f"| {name} | {thresholds['thresholds'][j]:.4f}{kept} | {_fmt(f1[j])} | {count} |")
    return out + [""]


def _prevalence_baseline(train, validate) -> float | None:
    """Micro-AUC of scoring every study with each finding's training prevalence."""
    if not all(hasattr(d, "targets") for d in (train, validate)):
        return None
    auc = scoring.prevalence_baseline_auc(train.targets, train.target_mask, validate.targets, validate.target_mask)
    return None if math.isnan(auc) else auc


def _positives(train) -> np.ndarray | None:
    if not hasattr(train, "targets"):
        return None
    return ((np.asarray(train.targets) > 0) & (np.asarray(train.target_mask) > 0)).sum(0)


def _count(split) -> str:
    return "?" if split is None else str(len(split))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, (float, np.floating)) else str(value)
