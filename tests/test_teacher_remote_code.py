"""Remote code runs only when the user passes ``trust_remote_code=true`` for this run: a planted
teacher folder whose base config maps to a local Python file (which writes a marker file when
imported) is refused by ``kdistill teacher generate`` with a message naming the folder and the
flag, and the marker never appears; a ``teacher.json`` that asks for remote code is not the
user's say either."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_teacher_toy import toy_docs, toy_studies, write_toy_corpus  # noqa: E402

from kdistill.errors import DataError  # noqa: E402
from teacher import generate as gen  # noqa: E402
from teacher import modeling  # noqa: E402
from teacher.pretrain import train_tokenizer  # noqa: E402
from teacher.train import TeacherTrainConfig, train  # noqa: E402

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    model_type = "llama"
class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture(scope="module")
def clean_teacher(tmp_path_factory):
    """A tiny trained teacher (base + adapter), before anything is planted."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("remote")
    corpus = write_toy_corpus(root / "corpus.jsonl", n_rationale=20)
    tok = train_tokenizer([d["text"] for d in toy_docs(20)], 300, root / "base")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                     ).save_pretrained(str(root / "base"))
    train(TeacherTrainConfig(max_steps=1, batch_size=4, lora_r=2, lora_alpha=4, save_every=0, cpu=True, max_length=128),
          root / "base", corpus, root / "teacher")
    return root


def _plant(clean: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the teacher whose base config has an auto_map to its own evil.py."""
    shutil.copytree(clean / "base", tmp_path / "base")
    shutil.copytree(clean / "teacher", tmp_path / "teacher")
    marker = tmp_path / "MARKER"
    (tmp_path / "base" / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    return tmp_path / "base", tmp_path / "teacher", marker


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from kdistill.data.phantom import PhantomConfig, synthesize

    root = tmp_path_factory.mktemp("phantom_rc")
    synthesize(PhantomConfig(n_studies=8, image_size=64, corpus_mb=0.01, seed=4), root)
    return root


def test_generate_refuses_a_base_that_maps_to_its_own_code_and_never_runs_it(clean_teacher, phantom, tmp_path):
    base, teacher, marker = _plant(clean_teacher, tmp_path)
    args = ["--data-root", str(phantom), "--teacher", str(teacher), "--out", str(tmp_path / "r"),
            "max_new_tokens=4", "cpu=true", "max_retries=0", "limit=2"]
    with pytest.raises(DataError) as err:
        gen.main(args)
    message = str(err.value)
    assert str(base) in message and "trust_remote_code=true" in message and "evil.py" in message
    assert not marker.exists()
    # the teacher says it was trained with remote code: still not the user's say for this run
    meta = json.loads((teacher / "teacher.json").read_text())
    (teacher / "teacher.json").write_text(json.dumps({**meta, "trust_remote_code": True}))
    with pytest.raises(DataError, match="trust_remote_code=true") as err:
        gen.main(args)
    assert str(teacher) in str(err.value)
    assert not marker.exists()


def test_a_tokenizer_config_with_auto_map_in_the_teacher_folder_is_refused(clean_teacher, tmp_path):
    shutil.copytree(clean_teacher / "teacher", tmp_path / "teacher")
    path = tmp_path / "teacher" / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    with pytest.raises(DataError, match="tokenizer_config.json has an auto_map") as err:
        modeling.load_teacher(tmp_path / "teacher")
    assert str(tmp_path / "teacher") in str(err.value)
    with pytest.raises(DataError, match="trust_remote_code=true"):
        gen.generate_rationales(toy_studies(1), tmp_path / "teacher", tmp_path / "r", gen.TeacherGenerateConfig(cpu=True))


def test_the_plant_is_real_code_that_runs_when_the_user_allows_it(clean_teacher, tmp_path, monkeypatch):
    """The positive control: with the user's flag, transformers imports evil.py (the marker
    appears), so the refusals above are what keeps it from running."""
    import transformers.dynamic_module_utils as dyn

    base, _, marker = _plant(clean_teacher, tmp_path)
    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # its copy of evil.py goes here
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    with pytest.raises(DataError):
        modeling.load_causal_lm(base)  # no flag: refused before transformers sees it
    assert not marker.exists()
    try:
        modeling.load_causal_lm(base, trust_remote_code=True)
    except Exception:  # noqa: BLE001 (the planted classes need not load; importing them is the point)
        pass
    assert marker.read_text() == "remote code ran"


def test_train_refuses_a_base_with_remote_code_without_the_flag(clean_teacher, tmp_path):
    base, _, marker = _plant(clean_teacher, tmp_path)
    with pytest.raises(DataError, match="trust_remote_code=true") as err:
        train(TeacherTrainConfig(max_steps=1, cpu=True), base, write_toy_corpus(tmp_path / "c.jsonl", 5), tmp_path / "t")
    assert str(base) in str(err.value)
    assert not marker.exists()
