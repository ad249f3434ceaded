"""Scarce labels (student.label_fraction): a seeded share of the training studies keeps its finding
labels; the rest keep their reports and rationales; a smaller share is a subset of a larger one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdistill import config as cfglib
from kdistill.config import ConfigError
from student.synthetic import TINY_MODEL, make_prepared, make_rationales, make_tokenizer
from student.train_config import StudentTrainConfig
from student.train_data import build_datasets


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    prep = make_prepared(200, 8, size=32)
    return prep, make_tokenizer(prep), make_rationales(prep)


def _cfg(**kw):
    return cfglib.from_dict(StudentTrainConfig, {"model": TINY_MODEL, "cpu": True, **kw})


def _kept(data):
    return {sid for sid, m in zip(data.train.study_ids, data.train.target_mask) if np.asarray(m).any()}


def test_a_share_of_the_studies_keeps_its_labels_and_all_keep_their_texts(toy):
    prep, tok, rat = toy
    full = build_datasets(_cfg(), prep, tok, rat)
    tenth = build_datasets(_cfg(label_fraction=0.1), prep, tok, rat)
    half = build_datasets(_cfg(label_fraction=0.5), prep, tok, rat)
    labelled = _kept(full)
    assert len(labelled) >= 190  # nearly every toy study has a counted label
    assert abs(len(_kept(half)) - 0.5 * len(labelled)) < 4 * np.sqrt(len(labelled) * 0.25)
    assert abs(len(_kept(tenth)) - 0.1 * len(labelled)) < 4 * np.sqrt(len(labelled) * 0.09)
    assert _kept(tenth) <= _kept(half) <= labelled  # nested: a smaller share keeps a subset
    # the studies whose labels are hidden keep their report and rationale tokens
    assert half.train.report_tokens == full.train.report_tokens
    assert half.train.rationale_tokens == full.train.rationale_tokens
    # validation labels are never hidden (thresholds and model selection need them)
    assert np.array_equal(half.validate.target_mask, full.validate.target_mask)
    other = build_datasets(_cfg(label_fraction=0.5, label_seed=1), prep, tok, rat)
    assert _kept(other) != _kept(half)


def test_label_fraction_outside_0_1_is_refused():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="label_fraction"):
            _cfg(label_fraction=bad)
