"""Explained reports: JSON content, overlays and the HTML index, with a stand-in model of known output."""
import json

import numpy as np
from PIL import Image

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
