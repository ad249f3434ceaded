"""The student's training inputs: the teacher's tokenizer, the prepared cache and the rationale
cache, joined into the train and validation datasets the loop reads."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, NamedTuple

from kdistill.config import ConfigError
from kdistill.errors import DataError
from student.config import StudentConfig
from student.train_config import StudentTrainConfig

log = logging.getLogger("kdistill.student")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot load the teacher's tokenizer: {err}") from None


class TrainingData(NamedTuple):
    train: Any  # student.data.StudyDataset
    validate: Any
    model_cfg: StudentConfig  # cfg.model with what the data decides (teacher embedding size, report context)
    rationale_coverage: dict[str, Any] | None
    tokenizer_check: str  # how the rationale cache was verified against the tokenizer


def build_datasets(cfg: StudentTrainConfig, prepared, tokenizer, rationales=None, tokenizer_dir=None,
                   rationale_path=None, prepared_path=None) -> TrainingData:
    """The train / validate splits of ``prepared`` with their texts tokenised and, when the loss
    needs them, the teacher's rationales attached. ``*_path``: the folders they came from, named
    in errors."""
    from student.data import StudyDataset, check_rationale_tokenizer, coverage, rationale_index
    from student.text import TokenSpec

    for split in ("train", "validate"):
        if split not in prepared:
            raise DataError(prepared_path, f"the prepared cache has no '{split}' split (has {list(prepared)})")
        if len(prepared[split]) == 0:
            # The student needs studies to learn from and a validation split to choose its
            # weights and thresholds on.
            raise DataError(prepared_path, f"the prepared cache's '{split}' split is empty "
                                           f"({', '.join(f'{k}: {len(v)}' for k, v in prepared.items())} rows); "
                                           "were its images all skipped? see meta.json's counts")
    if tokenizer is None and (cfg.loss.rep or cfg.needs_rationales):
        raise ConfigError("no tokenizer (a dataset without reports, or no teacher): the student can train its "
                          "finding heads only; set loss.rep=0 loss.kd=0 loss.emb=0 loss.tok=0")
    rat_index, tok_check, model_cfg, inconsistent = None, "not used", dataclasses.replace(cfg.model), 0
    if model_cfg.report_context == "rationale" and not cfg.loss.kd:
        # Nothing would teach the student to write the rationale its reports follow.
        log.info("report_context 'rationale' needs w_kd > 0: reports are written from the image alone")
        model_cfg.report_context = "none"
    if cfg.needs_rationales:
        if rationales is None:
            raise DataError(rationale_path, "w_kd, w_emb or w_tok > 0 needs the teacher's rationale cache")
        tok_check = check_rationale_tokenizer(rationale_path, tokenizer_dir, tokenizer, rationales)
        if cfg.loss.tok:
            if "topk_ids" not in rationales.column_names:
                raise DataError(rationale_path, "w_tok > 0 but the rationale cache has no teacher top-k log-probs; "
                                                "generate it with teacher_generate topk=K (e.g. 16)")
            if model_cfg.rationale_order != "as_written":
                raise ConfigError("w_tok > 0 needs model.rationale_order: as_written (the teacher's top-k "
                                  f"follow its rationale token by token), not {model_cfg.rationale_order!r}")
        rat_index, inconsistent = rationale_index(rationales, cfg.consistent_rationales_only, with_topk=cfg.loss.tok > 0)
    spec = TokenSpec(tokenizer, model_cfg.report_prefix, model_cfg.rationale_prefix) if tokenizer is not None else None
    order = (model_cfg.report_order, model_cfg.rationale_order, model_cfg.rationale_marker)
    train_ds = StudyDataset(prepared["train"], spec, rat_index, cfg.uncertain, cfg.blank, "train", *order)
    val_ds = StudyDataset(prepared["validate"], spec, rat_index, cfg.uncertain, cfg.blank, "validate", *order)
    if cfg.label_fraction < 1.0:
        kept = hide_labels(train_ds, cfg.label_fraction, cfg.label_seed)
        log.info("label_fraction %.2f: %d of %d training studies keep their labels (the rest train on their "
                 "reports and rationales only)", cfg.label_fraction, kept, len(train_ds))
    cover = coverage(train_ds, inconsistent) if rat_index is not None else None
    if cover and not cover["with_rationale"]:
        raise DataError(rationale_path, _no_rationale_at_all(train_ds, rationales, cfg.consistent_rationales_only,
                                                             prepared_path))
    if cover and cover["missing_rationale"]:
        msg = (f"{cover['missing_rationale']} of {cover['studies']} training studies have no rationale "
               f"(e.g. {', '.join(cover['missing_examples'])})")
        if cfg.require_rationales:
            raise DataError(rationale_path, msg + "; require_rationales is set")
        log.warning("%s: they train without the distillation terms", msg)
    if cfg.loss.emb:
        if train_ds.teacher_embedding is None:
            raise DataError(rationale_path, "w_emb > 0 but the rationale cache has no embeddings")
        model_cfg.teacher_embed_dim = int(train_ds.teacher_embedding.shape[1])
    return TrainingData(train_ds, val_ds, model_cfg, cover, tok_check)


def hide_labels(ds, fraction: float, seed: int) -> int:
    """Scarce labels: keep the finding labels of a seeded ``fraction`` of the split's studies and
    hide the rest (their classification targets masked out; reports and rationales stay). The
    draw is per study id, so a smaller fraction keeps a subset of a larger one's studies.
    Returns how many studies keep their labels."""
    import hashlib

    import numpy as np

    keep = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{sid}".encode()).digest()[:8], "big") / 2.0 ** 64 < fraction
                     for sid in ds.study_ids])
    ds.target_mask[~keep] = 0
    return int(keep.sum())


def _no_rationale_at_all(train_ds, rationales, consistent_only: bool, prepared_path) -> str:
    """Why no training study has a usable rationale: the cache's study ids are another
    dataset's, or every matching rationale was left out as inconsistent."""
    cache_ids = set(map(str, rationales.unique("study_id")))
    matching = sum(1 for s in train_ds.study_ids if s in cache_ids)
    mine = ", ".join(train_ds.study_ids[:3])
    if not matching:
        theirs = ", ".join(sorted(cache_ids)[:3])
        return (f"the rationale cache's study ids do not match the prepared cache's ({prepared_path or 'given'}): none "
                f"of its {len(cache_ids)} studies (e.g. {theirs}) is among the {len(train_ds)} training studies "
                f"(e.g. {mine}); it was made for another dataset: generate it for this one")
    if consistent_only:
        return (f"all {matching} rationales of the training studies are inconsistent with their labels and are "
                "left out (consistent_rationales_only); regenerate them, or set consistent_rationales_only=false")
    return f"no training study has a usable rationale ({matching} rows match)"


def load_inputs(cfg: StudentTrainConfig, prepared: str | Path, tokenizer_dir: str | Path | None,
                rationales: str | Path | None):
    """(prepared DatasetDict, tokenizer or None, rationale Dataset or None) from their folders; no
    tokenizer folder gives a student without text."""
    from kdistill.data.prepare import load_prepared
    from teacher.cache import STUDENT_COLUMNS, load_rationales

    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    data = load_prepared(prepared)
    cache = None
    if cfg.needs_rationales:
        if rationales is None:
            raise DataError(None, "w_kd, w_emb or w_tok > 0: give --rationales (the teacher's rationale cache)")
        cache = load_rationales(rationales, STUDENT_COLUMNS)
    return data, tokenizer, cache
