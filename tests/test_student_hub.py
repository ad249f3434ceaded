"""The student checkpoint from the Hugging Face side (huggingface_hub's PyTorchModelHubMixin:
``StudentModel.from_pretrained`` / ``save_pretrained``) and ``predict`` on file paths and PIL images."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import student
from kdistill import config as cfglib
from kdistill.config import ConfigError
from kdistill.errors import DataError
from kdistill.scoring import save_thresholds
from student import StudentConfig, create_student
from student.card import RESEARCH_USE
from student.checkpoint import save_tokenizer, save_weights
from student.model import StudentModel
from student.synthetic import TINY_MODEL, make_prepared, make_tokenizer
from test_images import write_dicom

SIZE = 32
THRESHOLDS = np.linspace(0.2, 0.8, 14)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A trained-looking checkpoint folder as the training loop writes it (weights, config,
    tokenizer, thresholds with their policy, a card)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = make_tokenizer(make_prepared(16, 8, size=SIZE))
    model = create_student(cfglib.from_dict(StudentConfig, {**TINY_MODEL}), tok)
    out = tmp_path_factory.mktemp("ckpt")
    save_weights(model.cfg, model.state_dict(), out)
    save_tokenizer(tok, out)
    save_thresholds(out, THRESHOLDS, policy="f1_min_precision", chosen_on="validate", n_studies=8)
    (out / "README.md").write_text("# the training loop's card\n", encoding="utf-8")
    return out


def _images(n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, SIZE, SIZE), dtype=np.uint8)


def test_config_json_says_its_model_type(folder):
    assert json.loads((folder / "config.json").read_text())["model_type"] == "kdistill-student"


def test_from_pretrained_equals_student_load(folder):
    via_hub = StudentModel.from_pretrained(str(folder))
    via_load = student.load(folder)
    x = _images()
    a, b = via_hub.predict(x, texts=False), via_load.predict(x, texts=False)
    np.testing.assert_array_equal(a["probs"], b["probs"])
    np.testing.assert_allclose(via_hub.thresholds.numpy(), THRESHOLDS, rtol=1e-6)
    assert not via_hub.training


def test_save_pretrained_round_trip_keeps_weights_thresholds_policy_and_card(folder, tmp_path):
    model = StudentModel.from_pretrained(folder)
    out = tmp_path / "copy"
    model.save_pretrained(out)
    again = StudentModel.from_pretrained(out)
    x = _images(seed=3)
    np.testing.assert_array_equal(model.predict(x)["probs"], again.predict(x)["probs"])
    assert model.predict(x)["reports"] == again.predict(x)["reports"]
    saved = json.loads((out / "thresholds.json").read_text())
    assert saved["policy"] == "f1_min_precision" and saved["n_studies"] == 8
    np.testing.assert_allclose(saved["thresholds"], THRESHOLDS, rtol=1e-6)
    assert (out / "README.md").read_text() == "# the training loop's card\n"
    assert json.loads((out / "config.json").read_text())["model_type"] == "kdistill-student"


def test_a_fresh_model_gets_a_card_with_the_research_use_statement(tmp_path):
    torch.manual_seed(0)
    model = create_student(cfglib.from_dict(StudentConfig, {**TINY_MODEL}), None)
    model.save_pretrained(tmp_path / "fresh")
    assert RESEARCH_USE in (tmp_path / "fresh" / "README.md").read_text()
    assert StudentModel.from_pretrained(tmp_path / "fresh").has_text is False


def test_another_model_type_is_refused_by_name(folder, tmp_path):
    bad = tmp_path / "bert"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"bert.*config\.json.*|config\.json.*'bert'.*kdistill-student"):
        student.load(bad)


def test_predict_reads_paths_and_pil_images_as_their_arrays(folder, tmp_path):
    model = student.load(folder)
    pixels = _images(1, seed=5)[0]
    png8, png16, dcm = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.dcm"
    Image.fromarray(pixels).save(png8)
    # 16-bit: v * 257 / 65535 == v / 255 exactly, so the model sees the same image.
    Image.fromarray(pixels.astype(np.uint16) * 257).save(png16)
    write_dicom(dcm, pixels.astype(np.uint16) * 257, WindowCenter=32767.5, WindowWidth=65536)
    ref = model.predict(pixels[None], texts=False)["probs"]
    for item in (png8, str(png8), png16, Image.open(png8), Image.open(png8).convert("RGB")):
        np.testing.assert_allclose(model.predict([item], texts=False)["probs"], ref, atol=1e-6)
    np.testing.assert_allclose(model.predict(png8, texts=False)["probs"], ref, atol=1e-6)  # one path alone
    # DICOM through its VOI window: within a grey level of the PNG.
    np.testing.assert_allclose(model.predict([dcm], texts=False)["probs"], ref, atol=2e-2)
    with pytest.raises(DataError, match="missing.png"):
        model.predict([tmp_path / "missing.png"], texts=False)


def test_tensorboard_true_names_the_extra_when_the_package_is_missing(monkeypatch):
    import importlib.util

    from student.train_config import StudentTrainConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"kdistill\[tensorboard\]"):
        cfglib.from_dict(StudentTrainConfig, {"tensorboard": True}, source="run.yaml", prefix="student")
    assert cfglib.from_dict(StudentTrainConfig, {}).tensorboard is False  # off unless asked for
