"""The student training stage's entry points: ``kdistill student train`` (:func:`main`), the
pipeline stage (:func:`run_stage`) and :func:`train_from_paths`; the loop is ``student.train``,
which re-exports these three."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from kdistill.outputs import pop_overwrite
from student.train_config import StudentTrainConfig
from student.train_data import load_inputs
from student.train_support import NonFiniteLoss

log = logging.getLogger("kdistill.student")


def train_from_paths(cfg: StudentTrainConfig, out_dir: str | Path, prepared: str | Path, tokenizer_dir: str | Path,
                     rationales: str | Path | None, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """:func:`student.train.train` on the caches at these paths (loaded by ``student.train_data``)."""
    from student.train import train

    data, tokenizer, cache = load_inputs(cfg, prepared, tokenizer_dir, rationales)
    return train(cfg, out_dir, data, tokenizer, cache, tokenizer_dir=tokenizer_dir, rationale_path=rationales, seed=seed,
                 prepared_path=prepared, overwrite=overwrite)


def run_stage(cfg: StudentTrainConfig, ctx) -> dict[str, Any]:
    """Pipeline stage: prepared cache, rationale cache and teacher tokenizer from the upstream stages.
    On a dataset without reports (no teacher ran) the student trains its finding heads only."""
    tokenizer_dir = cfg.tokenizer or ctx.stage_dir("teacher_train")
    rationales = cfg.rationales or ctx.stage_dir("teacher_generate")
    if not ctx.data.has_reports and cfg.tokenizer is None:
        log.warning("the data source %s has no report text: the student trains its finding heads only "
                    "(loss.rep, kd, emb and tok set to 0)", ctx.data.name)
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, rep=0.0, kd=0.0, emb=0.0, tok=0.0))
        tokenizer_dir = rationales = None
    metrics = train_from_paths(cfg, ctx.stage_dir("student"), prepared=cfg.prepared or ctx.stage_dir("prepare"),
                               tokenizer_dir=tokenizer_dir, rationales=rationales, seed=ctx.seed)
    cover = metrics.get("rationales") or {}
    return {
        "checkpoint": str(ctx.stage_dir("student")),
        "val_micro_auc": metrics["validation"]["micro_auc"],
        "val_macro_auc": metrics["validation"]["macro_auc"],
        "best_step": metrics["best_step"],
        "steps": metrics["steps"],
        "missing_rationales": cover.get("missing_rationale", 0),
        "images_per_s": metrics["images_per_s"],
    }


def main(argv: list[str] | None = None, prog: str = "kdistill student train") -> int:
    from kdistill.command import add_config_arguments, stage_config

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the student (image encoder + report decoder + 14 finding heads) with accelerate. "
                    "Several processes: accelerate launch [--config_file accelerate_config.yaml] -m kdistill.cli "
                    "student train ...",
    )
    parser.add_argument("--prepared", required=True, help="prepared image cache (kdistill data prepare)")
    parser.add_argument("--tokenizer", help="the teacher folder (its tokenizer is shared); omit it for a student of "
                                            "finding heads only (a dataset without reports; loss.rep=0 loss.kd=0 loss.emb=0)")
    parser.add_argument("--rationales", help="the teacher's rationale cache folder (needed when w_kd/w_emb/w_tok > 0)")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    parser.add_argument("--resume", action="store_true", help="deprecated: resuming is the default (resume=true)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (the config's seed wins when set)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it holds files that are not a student checkpoint")
    add_config_arguments(parser, "student", example="max_steps=50 loss.kd=0")
    args = parser.parse_intermixed_args(argv)
    overwrite = pop_overwrite(args.overrides) or args.overwrite
    cfg = stage_config(StudentTrainConfig, args, "student")
    try:
        metrics = train_from_paths(cfg, args.out, args.prepared, args.tokenizer, args.rationales, args.seed,
                                   overwrite=overwrite)
    except NonFiniteLoss as err:
        print(f"{prog}: stopped: {err}", file=sys.stderr)
        return 1
    v = metrics["validation"]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"student checkpoint: {args.out}  steps {metrics['steps']} (best {metrics['best_step']})  "
          f"val micro-AUC {_fmt(v['micro_auc'])}  macro-AUC {_fmt(v['macro_auc'])}  {metrics['images_per_s']} img/s")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
