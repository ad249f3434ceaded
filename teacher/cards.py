"""Model and dataset cards (``README.md``) for what the teacher stages write: the teacher folder
(what it was trained on, its config, its measured figures, how to load it) and the rationale
folder (what a row holds, who wrote it, how consistent it is). Both say what the outputs are
for: research, never clinical decisions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdistill.io import write_text_atomic

RESEARCH_USE = (
    "**Research use only.** This is a research artefact of kdistill for studying the distillation of "
    "text rationales into image models. It is not a medical device, has not been validated clinically, "
    "and its text must not be used to diagnose, treat or triage anyone. A rationale can name a finding "
    "that is not there or miss one that is; the `consistent` flag only says whether a rule-based labeler "
    "reads the same findings as the study's labels."
)


def _table(figures: dict[str, Any]) -> str:
    rows = [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in figures.items()
            if v is not None and not isinstance(v, (dict, list))]
    return "| figure | value |\n| --- | --- |\n" + "\n".join(rows) if rows else "(none recorded)"


def write_teacher_card(out_dir: Path, meta: dict[str, Any], pretrain: dict[str, Any] | None = None) -> Path:
    """``README.md`` of a teacher folder from its ``teacher.json`` content (and the base's
    ``pretrain.json`` when the base was pretrained by ``kdistill teacher pretrain``)."""
    cfg = meta.get("config", {})
    result = meta.get("result", {})
    lines = [
        f"# Teacher `{meta['teacher_id']}`", "",
        "A causal language model with a LoRA adapter (peft) trained by `kdistill teacher train` to write "
        "clinical rationales for chest X-ray studies from their reports and/or labelled findings.", "",
        "## What it was trained on", "",
        f"- base model: `{meta['base']}`" + (f" (relative to this folder: `{meta['base_relative']}`)"
                                              if meta.get("base_relative") else ""),
        f"- corpus: `{meta.get('corpus')}`",
        f"- prompt mode: `{meta.get('prompt_mode', 'labels+report')}` (prompt version {meta.get('prompt_version', '?')})",
        f"- LoRA: r={cfg.get('lora_r')}, alpha={cfg.get('lora_alpha')}, dropout={cfg.get('lora_dropout')}, "
        f"targets {meta.get('lora_targets')}",
        f"- {cfg.get('max_steps')} steps, batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, "
        f"mixed precision {cfg.get('mixed_precision')}, seed {cfg.get('seed')}",
    ]
    if pretrain:
        pcfg, pres = pretrain.get("config", {}), pretrain.get("result", {})
        lines += [f"- the base was pretrained from scratch by `kdistill teacher pretrain` on the same kind of corpus: "
                  f"{pres.get('params')} parameters ({pcfg.get('model_config')}), {pres.get('docs')} textbook docs and "
                  f"{pres.get('pairs')} prompt -> rationale pairs, {pres.get('steps')} steps"]
    lines += ["", "## Measured figures (held-out part of the corpus)", "", _table(
        {k: v for k, v in result.items() if k not in ("eval_history",)})]
    if pretrain:
        lines += ["", "Pretraining:", "", _table(pretrain.get("result", {}))]
    lines += [
        "", "## Use", "",
        "```bash", "kdistill teacher generate --teacher THIS_FOLDER --data-root DATA --out RATIONALES", "```", "",
        "```python", "from peft import AutoPeftModelForCausalLM",
        "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_FOLDER\")  # base path in adapter_config.json",
        "```", "",
        f"Full config: `teacher.json`. Adapter sha256: `{meta.get('adapter_hash')}`.", "",
        "## Intended use", "", RESEARCH_USE, "",
    ]
    path = Path(out_dir) / "README.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def write_rationale_card(out_dir: Path, meta: dict[str, Any], summary: dict[str, Any]) -> Path:
    """``README.md`` of a rationale folder: schema, provenance (cache.json), counts."""
    from teacher.cache import COLUMNS, DESCRIPTION, TOPK_COLUMNS

    lines = [
        "# Teacher rationales", "", DESCRIPTION, "",
        "Load it with `datasets.load_from_disk(\"dataset\")` or `teacher.cache.load_rationales(THIS_FOLDER)`.", "",
        "## Columns", "",
        *[f"- `{c}`" for c in COLUMNS + (TOPK_COLUMNS if summary.get("topk") or meta.get("gen_config", {}).get("topk")
                                          else ())],
        "", "## Provenance", "",
        *[f"- {k}: `{meta[k]}`" for k in ("teacher_id", "base", "adapter_hash", "prompt_version", "prompt_mode",
                                           "gen_config_hash", "tokenizer_hash") if k in meta],
        f"- generation config: `{json.dumps(meta.get('gen_config', {}), sort_keys=True)}`", "",
        "## Counts", "", _table({k: summary.get(k) for k in ("rows", "consistent", "consistent_fraction", "retried",
                                                            "truncated", "unique_prompts_this_run", "resumed_rows")}),
        "", "## Intended use", "", RESEARCH_USE, "",
    ]
    path = Path(out_dir) / "README.md"
    write_text_atomic(path, "\n".join(lines))
    return path
