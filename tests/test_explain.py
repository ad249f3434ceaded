"""Explained reports: pixels on the right scale from every input path, decisions and agreement,
maps on one shared scale, texts that end, pages that say what they show. Stand-in models of
known output, plus one real (untrained) checkpoint end to end."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from explain_support import KnownModel, gradient_images, probs_with, tiny_checkpoint
from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX, FINDINGS
from student.explain import ExplainConfig, explain_batch, explain_files, unit_pixels, write_pages
from student.explain.paths import study_folder
from student.explain.saliency import colour_scale, overlay
from student.explain.texts import complete_sentences, ended_share, shared_counts


def _explain(model, images, ids, out, **kw):
    records = explain_batch(model, images, ids, out, **kw)
    summary = write_pages(records, out, "ckpt", {"policy": "prevalence", "chosen_on": "validate", "n_studies": 61})
    return records, summary


def _png(out, study_id, name="image.png"):
    return np.asarray(Image.open(out / study_folder(study_id) / name))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, np.uint16, np.float64])
def test_prepared_pixels_of_any_dtype_reach_page_and_model_unchanged(tmp_path, dtype):
    # datasets' numpy format returns the cache's uint8 images as int64: the old code divided by
    # 255 only for uint8 and wrote near-white pages. Every integer dtype holds 8-bit values here.
    images = gradient_images(3)
    stored = images / 255.0 if dtype == np.float64 else images.astype(dtype)
    model = KnownModel()
    _explain(model, stored, ["a", "b", "c"], tmp_path)
    assert np.allclose(model.seen[0], images / 255.0, atol=1e-6) and model.seen[0].dtype == np.float32
    for i, sid in enumerate("abc"):
        page_image = _png(tmp_path, sid)
        assert page_image.std() > 30, "the radiograph on the page is (nearly) constant"
        assert np.array_equal(page_image, images[i])


def test_out_of_range_pixels_are_refused_by_name():
    with pytest.raises(DataError, match="0..255"):
        unit_pixels(np.full((1, 4, 4), 300, np.int64), "x")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        unit_pixels(np.full((1, 4, 4), 2.0), "x")


def _write_formats(tmp_path):
    from test_images import write_dicom

    ramp = gradient_images(1, 40)[0]
    paths = {}
    Image.fromarray(ramp).save(tmp_path / "eight.png")
    Image.fromarray((ramp.astype(np.uint16) * 257)).save(tmp_path / "sixteen.png")  # 16-bit: I;16
    Image.fromarray(ramp).save(tmp_path / "photo.jpg", quality=95)
    write_dicom(tmp_path / "scan.dcm", ramp.astype(np.uint16) * 16, bits_stored=12)  # no window: min-max
    for name in ("eight.png", "sixteen.png", "photo.jpg", "scan.dcm"):
        paths[name] = tmp_path / name
    return ramp, paths


def test_image_files_of_every_format_are_read_onto_the_unit_range(tmp_path, monkeypatch):
    import student

    ramp, paths = _write_formats(tmp_path)
    assert Image.open(paths["sixteen.png"]).mode.startswith("I")
    model = KnownModel()
    monkeypatch.setattr(student, "load", lambda path: model)
    out = tmp_path / "out"
    summary = explain_files("ckpt", list(paths.values()), out, ExplainConfig())
    assert summary["n_studies"] == 4
    expected = ramp / 255.0  # DICOM min-max: 0..255 * 16 -> 0..1 as well
    for i, (name, path) in enumerate(paths.items()):
        shown = np.asarray(Image.open(out / study_folder(str(path), name) / "image.png"), dtype=np.float64) / 255
        assert shown.shape == (40, 40) and shown.std() > 0.1, name
        error = np.abs(shown - expected)
        assert (error.mean() < 0.01 and error.max() < 0.1) if name == "photo.jpg" else error.max() < 0.005, name
        model_input = model.seen[0][i]  # resized to the model's 32 x 32, still on [0, 1]
        assert model_input.shape == (32, 32) and 0.0 <= model_input.min() < 0.05 and model_input.max() > 0.9, name


def test_records_carry_decisions_thresholds_agreement_and_no_finding_consistency(tmp_path):
    probs = np.stack([probs_with(Cardiomegaly=0.9, No_Finding=0.8),  # No Finding above threshold, but a finding
                      probs_with(Support_Devices=0.7, No_Finding=0.8),  # a device is not a pathology
                      probs_with(No_Finding=0.3)])  # nothing decided: not even No Finding
    labels = np.full((3, 14), np.nan)
    labels[0, FINDING_INDEX["Cardiomegaly"]] = 1
    labels[0, FINDING_INDEX["Edema"]] = -1
    labels[1, FINDING_INDEX["Support Devices"]] = 0
    model = KnownModel(probs=probs, thresholds=np.full(14, 0.5))
    records, _ = _explain(model, gradient_images(3), ["s1", "s2", "s3"], tmp_path, labels=labels,
                          references=["Cardiomegaly.", "Normal.", None])
    assert [r["positive_findings"] for r in records] == [["Cardiomegaly"], ["No Finding", "Support Devices"], []]
    row = {f["name"]: f for f in records[0]["findings"]}
    assert row["Cardiomegaly"] == {**row["Cardiomegaly"], "probability": 0.9, "threshold": 0.5, "decision": True,
                                   "reference": "positive", "agreement": True}
    assert row["Edema"]["reference"] == "uncertain" and row["Edema"]["agreement"] is None  # not counted
    assert row["No Finding"]["reference"] == "not mentioned" and row["No Finding"]["agreement"] is True
    assert records[0]["agreement"] == {"agree": 13, "counted": 13}
    devices = {f["name"]: f for f in records[1]["findings"]}["Support Devices"]
    assert devices["reference"] == "negative" and devices["agreement"] is False
    saved = json.loads((tmp_path / study_folder("s1") / "explanation.json").read_text())
    assert saved["probabilities"]["Cardiomegaly"] == 0.9 and "No Finding is decided positive only" in \
        saved["operating_points"]["no_finding"]


def test_maps_share_one_scale_muted_when_not_decided_and_figures_use_the_region(tmp_path):
    maps = np.ones((1, 14, 32, 32), np.float32)
    card, edema = FINDING_INDEX["Cardiomegaly"], FINDING_INDEX["Edema"]
    maps[0, card, :8, :8] = 4.0  # decided positive, peak 4
    maps[0, edema, :8, :8] = 9.0  # not decided: peaks higher, clipped
    regions = np.zeros((1, 32, 32), np.uint16)
    regions[0, :16, :16] = 1 << card  # the Cardiomegaly region: a quarter of the image
    model = KnownModel(probs=probs_with(Cardiomegaly=0.9, Edema=0.2)[None], maps=maps)
    records, _ = _explain(model, gradient_images(1), ["s"], tmp_path, regions=regions)
    r = records[0]
    # attention / its mean: the mean of the Cardiomegaly map is (64*4 + 960)/1024 = 1.1875
    assert r["saliency"]["scale"] == [1.0, pytest.approx(3.4)]  # 4/1.1875 = 3.368 rounded up
    rows = {f["name"]: f for f in r["findings"]}
    assert rows["Cardiomegaly"]["map"]["muted"] is False and rows["Edema"]["map"]["muted"] is True
    assert rows["Edema"]["map"]["clipped"] and not rows["Cardiomegaly"]["map"]["clipped"]
    assert rows["No Finding"]["map"] is None
    (energy,) = rows["Cardiomegaly"]["map"]["figures"]
    # mass in the region: 64*4 + 192*1 of 1216 -> 448/1216; a flat map would score 0.25
    assert energy["name"] == "energy_in_region" and energy["value"] == pytest.approx(448 / 1216)
    assert energy["reference"] == 0.25
    assert rows["Edema"]["map"]["figures"] == []  # no Edema region: no figure
    bright = _png(tmp_path, "s", rows["Cardiomegaly"]["map"]["file"]).astype(int)
    faint = _png(tmp_path, "s", rows["Edema"]["map"]["file"]).astype(int)
    gray = _png(tmp_path, "s").astype(int)
    assert np.abs(bright - gray[..., None])[:8, :8].mean() > np.abs(faint - gray[..., None])[:8, :8].mean() > 0
    assert np.array_equal(bright[20:, 20:], np.repeat(gray[20:, 20:, None], 3, axis=2))  # at the floor: unchanged


def test_overlay_and_colour_scale_by_hand():
    gray = np.linspace(0, 1, 16).reshape(4, 4)
    saliency = np.zeros((4, 4))
    saliency[0, 0] = 2.0
    rgb = overlay(gray, saliency, (0.0, 2.0))
    assert np.array_equal(rgb[1:, :, 0], np.rint(255 * gray[1:]).astype(np.uint8))
    assert not np.array_equal(rgb[0, 0], [0, 0, 0])
    peaks = np.zeros((3, 2, 2))
    peaks[0, 0, 0], peaks[1, 0, 0], peaks[2, 0, 0] = 2.31, 7.0, 1.2
    assert colour_scale(peaks, np.array([True, False, True]), 1.0) == (1.0, pytest.approx(2.4))
    assert colour_scale(peaks, np.array([False, False, False]), 1.0) == (1.0, 7.0)


@pytest.mark.parametrize("text, shown, ended", [
    ("No effusion. Heart is normal.", "No effusion. Heart is normal.", True),
    ("No effusion. The cardiothoracic ratio is above 0.5 on a", "No effusion.", False),
    ("Ratio 0.5 cm", "Ratio 0.5 cm", False),  # no full sentence: shown whole, marked
    ('He said "clear." Then', 'He said "clear."', False),
    ("", "", False),
    ("Is it? Yes!", "Is it? Yes!", True),
])
def test_texts_are_trimmed_to_their_last_full_sentence(text, shown, ended):
    t = complete_sentences(text)
    assert (t.shown, t.ended, t.generated) == (shown, ended, text)


def test_ended_share_and_shared_counts():
    assert ended_share([complete_sentences("A."), complete_sentences("A"), complete_sentences("B.")]) == 2 / 3
    assert ended_share([]) is None
    assert shared_counts(["x", "y", "x", "", "x", ""]) == [2, 0, 2, 0, 2, 0]


def test_pages_state_the_rule_the_method_and_research_use_with_alt_text_and_no_network(tmp_path):
    probs = np.stack([probs_with(Cardiomegaly=0.9), probs_with(Edema=0.7)])
    model = KnownModel(probs=probs, reports=["<b>Heart</b> enlarged.", "Edema is seen and the"],
                       rationales=["Same text.", "Same text."])
    labels = np.zeros((2, 14))
    _, summary = _explain(model, gradient_images(2), ["s1", "s2"], tmp_path, labels=labels,
                          references=["Cardiomegaly.", "Edema."])
    assert summary["reports_ended"] == 0.5 and summary["distinct_rationales"] == 1 and summary["n_studies"] == 2
    index = (tmp_path / "index.html").read_text()
    pages = [index] + [(tmp_path / study_folder(s) / "study.html").read_text() for s in ("s1", "s2")]
    for page in pages:
        assert "Research model output, not a diagnosis." in page
        assert "prevalence-matched threshold" in page and "No Finding is decided positive only" in page
        imgs = re.findall(r"<img\b[^>]*>", page)
        assert imgs and all(re.search(r'alt="[^"]{10,}"', tag) for tag in imgs)
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from the network
        assert "<b>Heart</b>" not in page  # model text is escaped
    assert "&lt;b&gt;Heart&lt;/b&gt; enlarged." in pages[1]
    assert index.count('<tr data-study="') == 2 and 'class="sortable"' in index and "addEventListener" in index
    assert f'href="{study_folder("s1")}/study.html"' in index
    study2 = pages[2]
    assert "cut: the model stopped at its length limit" in study2
    assert "The same rationale text was written for 1 other study" in study2
    assert "class-query attention" in study2 and "one scale for every map of this study" in study2
    for name in FINDINGS:
        assert name in study2


def test_kdistill_explain_end_to_end_with_a_real_checkpoint(tmp_path):
    from kdistill.cli import main
    from student.synthetic import make_prepared

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    prep = make_prepared(4, 3, size=32)
    prep.save_to_disk(str(tmp_path / "prepared"))
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.asarray(prep["test"]["image"][i], dtype=np.uint8)).resize((40, 40)).save(path)
        paths.append(str(path))
    assert main(["explain", str(ckpt), "--images", *paths, "--out", str(tmp_path / "files")]) == 0
    assert main(["explain", str(ckpt), "--prepared", str(tmp_path / "prepared"), "--out", str(tmp_path / "prep"),
                 "max_new_tokens=8", "max_studies=3"]) == 0
    folders = sorted(p.parent.name for p in (tmp_path / "prep").glob("*/explanation.json"))
    assert folders == sorted(study_folder(s) for s in prep["test"]["study_id"][:3])
    record = json.loads((tmp_path / "prep" / folders[0] / "explanation.json").read_text())
    assert [f["name"] for f in record["findings"]] == list(FINDINGS) and record["reference_report"]
    assert all((tmp_path / "prep" / folders[0] / f["map"]["file"]).is_file() for f in record["findings"] if f["map"])
    assert record["agreement"]["counted"] > 0 and isinstance(record["report"]["generated"], str)
    assert "img1.png" in (tmp_path / "files" / "index.html").read_text()

    # the pipeline's stage: the run folder's checkpoint and cache, a summary.json can hold
    from kdistill.pipeline import RunContext, _by_name
    from student.explain import run_stage

    run_dir = tmp_path / "run"
    for stage, source in (("student", ckpt), ("prepare", tmp_path / "prepared")):
        (run_dir / _by_name(stage).folder).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / _by_name(stage).folder).symlink_to(source)
    summary = run_stage(ExplainConfig(max_studies=2, max_new_tokens=4), RunContext(run_dir, "t", 0))
    assert json.loads(json.dumps(summary, allow_nan=False))["n_studies"] == 2
    assert summary["index"] == str(run_dir / "explain" / "index.html") and 0 <= summary["reports_ended"] <= 1


def test_generation_stops_at_end_of_text_and_its_budget_defaults_to_the_checkpoints_length(tmp_path):
    import torch

    import student

    model = student.load(tiny_checkpoint(tmp_path / "ckpt"))
    eos, word = model.tokens.eos_id, model.tokens.encode(["heart"])[0][0]
    calls = []

    class Head(torch.nn.Module):  # two tokens, then end-of-text, whatever the budget
        def forward(self, hidden):
            calls.append(hidden.shape[0])
            logits = torch.zeros(*hidden.shape[:-1], model.cfg.vocab_size)
            logits[..., eos if len(calls) % 3 == 0 else word] = 1.0
            return logits

    model.decoder.lm_head = Head()
    seen = []
    generate = model.generate_texts
    model.generate_texts = lambda tokens, n, rationales=True: seen.append(n) or generate(tokens, n, rationales)
    out = model.predict(gradient_images(1) / 255.0, max_new_tokens=None)
    assert seen == [model.cfg.max_text_len] == [48]
    assert len(calls) == 6  # 3 steps for the rationale, 3 for the report: stopped at eos, not at 48
    assert out["reports"][0] == model.tokens.decode([word, word]) == out["rationales"][0] != ""


def test_deletion_auc_is_shown_when_asked_for_with_its_random_order_reference(tmp_path):
    import student

    model = student.load(tiny_checkpoint(tmp_path / "ckpt"))
    cfg = ExplainConfig(figures=["energy_in_region", "deletion_auc"], deletion_steps=2, max_new_tokens=2,
                        figures_on="all")
    records = explain_batch(model, gradient_images(1), ["s"], tmp_path / "out", cfg)
    for row in records[0]["findings"]:
        if row["map"] is None:
            continue
        (figure,) = row["map"]["figures"]  # no regions given: energy in region is left out
        assert figure["name"] == "deletion_auc" and 0 <= figure["value"] <= 1 and 0 <= figure["reference"] <= 1
    # by default only the maps of positive findings (decided, or labelled positive) get figures
    labels = np.full((1, 14), np.nan)
    labels[0, 2] = 1.0
    default = ExplainConfig(deletion_steps=2, max_new_tokens=2)
    records = explain_batch(model, gradient_images(1), ["s"], tmp_path / "out2", default, labels=labels)
    for j, row in enumerate(records[0]["findings"]):
        if row["map"] is not None:
            assert bool(row["map"]["figures"]) == (row["decision"] or j == 2), row["name"]
