import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from kdistill import config as cfglib
from kdistill.config import ConfigError
from kdistill.labels import FINDINGS, apply_policy, parse_label
from kdistill.pipeline import load_run_config

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Inner:
    lr: float = 1e-3
    mode: str = "a"


@dataclasses.dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    tags: list[str] = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: int | None = None

    def validate(self):
        if self.steps < 0:
            raise ValueError("steps must be >= 0")


def test_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner:\n  lr: 0.5\n")
    cfg = cfglib.load(Outer, path, ["inner.mode=b", "steps=3", "tags=[p, q]"])
    assert cfg == Outer(name="y", steps=3, tags=["p", "q"], inner=Inner(lr=0.5, mode="b"))
    assert cfglib.from_dict(Outer, cfglib.to_dict(cfg)) == cfg
    assert cfglib.config_hash(cfg) == cfglib.config_hash(cfglib.from_dict(Outer, cfglib.to_dict(cfg)))
    assert cfglib.config_hash(cfg) != cfglib.config_hash(Outer())


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as err:
        cfglib.load(Outer, path)
    assert "inner.lrr" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("text,needle", [("steps: ten\n", "integer"), ("steps: -1\n", ">= 0"), ("maybe: 1.5\n", "maybe")])
def test_wrong_types_and_validation(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        cfglib.load(Outer, path)


def test_every_shipped_config_validates():
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs, "configs/ holds no YAML"
    for path in configs:
        load_run_config(path)


def test_labels_and_policies():
    assert len(FINDINGS) == 14 and FINDINGS[8] == "No Finding"
    assert math.isnan(parse_label("")) and parse_label("-1.0") == -1.0
    with pytest.raises(ValueError):
        parse_label("2")
    y = np.array([1, 0, -1, np.nan], dtype=np.float32)
    t, m = apply_policy(y, uncertain="ignore")
    assert t.tolist() == [1, 0, 0, 0] and m.tolist() == [1, 1, 0, 1]
    t, m = apply_policy(y, uncertain="ones", blank="ignore")
    assert t.tolist() == [1, 0, 1, 0] and m.tolist() == [1, 1, 1, 0]


def test_yaml_no_and_yes_stay_the_words_a_literal_knob_expects():
    """`mixed_precision=no` (the README's fp32 fallback) is YAML's False; a Literal knob that
    spells the choice "no" must get "no", on the command line and in a file."""
    from student.train_config import StudentTrainConfig

    data = cfglib.parse_overrides(["mixed_precision=no"])
    assert data["mixed_precision"] is False  # what YAML gives
    assert cfglib.from_dict(StudentTrainConfig, data).mixed_precision == "no"
    from teacher.pretrain import TeacherPretrainConfig

    assert cfglib.from_dict(TeacherPretrainConfig, {"mixed_precision": False}).mixed_precision == "no"
    with pytest.raises(ConfigError, match="must be one of"):  # a bool where no choice spells it
        cfglib.from_dict(StudentTrainConfig, {"uncertain": True})
