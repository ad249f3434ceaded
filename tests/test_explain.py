"""Explained reports: JSON content, overlays and the HTML index, with a stand-in model of known output."""
import json

import numpy as np
from PIL import Image

from kdistill.scoring import save_thresholds
from kdistill.labels import FINDINGS, FINDING_INDEX
from student.explain import _overlay, explain_batch, write_index


class _KnownModel:
    image_size = 32

    def predict(self, images):
        b = len(images)
        probs = np.full((b, 14), 0.1)
        probs[:, FINDING_INDEX["Cardiomegaly"]] = 0.9
        maps = np.zeros((b, 14, 32, 32), dtype=np.float32)
        maps[:, FINDING_INDEX["Cardiomegaly"], 10:20, 10:20] = 1.0
        return {"probs": probs, "decisions": probs > 0.5, "reports": ["Cardiomegaly. <b>"] * b,
                "rationales": ["The heart is enlarged."] * b, "maps": maps}


def test_explain_batch_writes_json_overlays_and_escaped_index(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32), dtype=np.uint8)
    records = explain_batch(_KnownModel(), images, ["s1", "s/2"], tmp_path, maps_per_study=2, references=["r1", "r2"])
    assert [r["positive_findings"] for r in records] == [["Cardiomegaly"], ["Cardiomegaly"]]
    first = json.loads((tmp_path / "s1" / "explanation.json").read_text())
    assert first["probabilities"]["Cardiomegaly"] == 0.9 and first["report"] == "Cardiomegaly. <b>"
    # the decided-positive finding first, then the next most probable (No Finding never drawn)
    assert list(first["maps"])[0] == "Cardiomegaly" and len(first["maps"]) == 2
    assert "No Finding" not in first["maps"]
    assert (tmp_path / "s_2" / "image.png").is_file()  # ids become safe folder names
    overlay = np.asarray(Image.open(tmp_path / "s1" / first["maps"]["Cardiomegaly"]))
    assert overlay.shape == (32, 32, 3)
    page = write_index(records, tmp_path).read_text()
    assert "&lt;b&gt;" in page and "<b>Report:</b>" in page  # report text escaped, markup ours


def test_overlay_leaves_zero_map_pixels_unchanged():
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    saliency = np.zeros((4, 4), dtype=np.float32)
    saliency[0, 0] = 1.0
    rgb = _overlay(image, saliency)
    expected = (255 * image).astype(np.uint8)
    assert np.array_equal(rgb[1:, :, 0], expected[1:, :]) and np.array_equal(rgb[1:, :, 2], expected[1:, :])
    assert not np.array_equal(rgb[0, 0], np.repeat(expected[0, 0], 3))


def test_kdistill_explain_on_image_files_with_a_real_checkpoint(tmp_path):
    import torch

    import student
    from kdistill.cli import main
    from student import checkpoint as ckpt
    from kdistill import config as cfglib
    from student.synthetic import TINY_MODEL, make_prepared, make_tokenizer

    torch.manual_seed(0)
    prep = make_prepared(8, 4, size=32)
    tok = make_tokenizer(prep)
    model = student.create_student(cfglib.from_dict(student.StudentConfig, {**TINY_MODEL, "teacher_embed_dim": 16}), tok)
    ckpt.save_weights(model.cfg, model.state_dict(), tmp_path / "ckpt")
    ckpt.save_tokenizer(tok, tmp_path / "ckpt")
    save_thresholds(tmp_path / "ckpt", np.full(14, 0.5))
    paths = []
    for i in range(3):  # files of another size than the model's: resized on the way in
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.asarray(prep["test"]["image"][i], dtype=np.uint8)).resize((40, 40)).save(path)
        paths.append(str(path))
    assert main(["explain", str(tmp_path / "ckpt"), "--images", *paths, "--out", str(tmp_path / "out")]) == 0
    explained = sorted(p.parent.name for p in (tmp_path / "out").glob("*/explanation.json"))
    assert explained == ["img0", "img1", "img2"]
    record = json.loads((tmp_path / "out" / "img0" / "explanation.json").read_text())
    assert set(record["probabilities"]) == set(FINDINGS) and isinstance(record["report"], str)
    assert len(record["maps"]) >= 3 and all((tmp_path / "out" / "img0" / f).is_file() for f in record["maps"].values())
    assert "img2" in (tmp_path / "out" / "index.html").read_text()
