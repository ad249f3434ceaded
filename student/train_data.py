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
                   rationale_path=None) -> TrainingData:
    """The train / validate splits of ``prepared`` with their texts tokenised and, when the loss
    needs them, the teacher's rationales attached."""
    from student.data import StudyDataset, check_rationale_tokenizer, coverage, rationale_index
    from student.text import TokenSpec

    for split in ("train", "validate"):
        if split not in prepared:
            raise DataError(None, f"the prepared cache has no '{split}' split (has {list(prepared)})")
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
    spec = TokenSpec(tokenizer, model_cfg.report_prefix, model_cfg.rationale_prefix)
    order = (model_cfg.report_order, model_cfg.rationale_order, model_cfg.rationale_marker)
    train_ds = StudyDataset(prepared["train"], spec, rat_index, cfg.uncertain, cfg.blank, "train", *order)
    val_ds = StudyDataset(prepared["validate"], spec, rat_index, cfg.uncertain, cfg.blank, "validate", *order)
    cover = coverage(train_ds, inconsistent) if rat_index is not None else None
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


def load_inputs(cfg: StudentTrainConfig, prepared: str | Path, tokenizer_dir: str | Path,
                rationales: str | Path | None):
    """(prepared DatasetDict, tokenizer, rationale Dataset or None) from their folders."""
    from kdistill.data.prepare import load_prepared
    from teacher.cache import STUDENT_COLUMNS, load_rationales

    tokenizer = load_tokenizer(tokenizer_dir)
    data = load_prepared(prepared)
    cache = None
    if cfg.needs_rationales:
        if rationales is None:
            raise DataError(None, "w_kd, w_emb or w_tok > 0: give --rationales (the teacher's rationale cache)")
        cache = load_rationales(rationales, STUDENT_COLUMNS)
    return data, tokenizer, cache
