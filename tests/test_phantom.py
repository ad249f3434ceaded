"""The phantom generator: layout, determinism, label statistics, ground-truth regions, reports
that agree with their labels, the shortcut option, the corpus and the pipeline stage."""
from __future__ import annotations

import csv
import gzip
import json
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdistill.config import ConfigError, from_dict
from kdistill.errors import DataError
from kdistill.labels import FINDINGS
from kdistill.data.phantom import FindingSpec, PhantomConfig, render_study, synthesize
from kdistill.data.phantom.knowledge import load_knowledge
from kdistill.data.phantom.report import write_report
from kdistill.data.phantom.sampler import plan_studies

CSV_NAMES = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-split.csv.gz")

# Hand-written, independent of the generator's phrase banks: words by which a report names a finding.
KEYWORDS = {
    "Atelectasis": r"atelectasis",
    "Cardiomegaly": r"cardiomegaly|heart size|heart is|enlarged heart|cardiac silhouette",
    "Consolidation": r"consolidation",
    "Edema": r"edema",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fracture",
    "Lung Lesion": r"nodule|\bmass\b",
    "Lung Opacity": r"opacit",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening",
    "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothorax",
    "Support Devices": r"tube|catheter|central line|pacemaker|support devices",
}
NEGATION = re.compile(r"\b(no|not|without|normal|within normal limits|unremarkable)\b", re.I)
HEDGE = re.compile(r"\b(possible|cannot be excluded|cannot exclude|may represent|may be|concerning for|borderline)\b", re.I)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def _sentences(report: str) -> list[str]:
    body = report.split("FINDINGS:", 1)[1]
    body = " ".join(body.replace("IMPRESSION:", ". ").split())
    body = re.sub(r"\b\d\. ", "", body)  # numbered impression items
    return [s.strip() for s in re.split(r"(?<=\.)\s+", body) if s.strip()]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    cfg = PhantomConfig(n_studies=300, seed=11, image_size=128, corpus_mb=0.4,
                        shortcut_finding="Cardiomegaly", shortcut_strength=1.0)
    synthesize(cfg, root)
    return root


@pytest.fixture(scope="module")
def studies(phantom) -> list[dict]:
    meta = {r["study_id"]: r for r in _read_csv(phantom / CSV_NAMES[0])}
    split = {r["study_id"]: r["split"] for r in _read_csv(phantom / CSV_NAMES[2])}
    rois: dict[str, list[dict]] = {}
    for line in (phantom / "rois.jsonl").read_text().splitlines():
        row = json.loads(line)
        rois.setdefault(row["study_id"], []).append(row)
    out = []
    for row in _read_csv(phantom / CSV_NAMES[1]):
        m = meta[row["study_id"]]
        folder = f"files/p{m['subject_id'][:2]}/p{m['subject_id']}/s{m['study_id']}"
        out.append({
            "meta": m, "split": split[row["study_id"]], "folder": folder,
            "labels": {f: (math.nan if row[f] == "" else float(row[f])) for f in FINDINGS},
            "report": (phantom / f"{folder}.txt").read_text(),
            "rois": rois.get(row["study_id"], []),
        })
    return out


def test_same_seed_gives_identical_files(tmp_path):
    cfg = PhantomConfig(n_studies=30, seed=5, image_size=96, corpus_mb=0.05)
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(cfg, a)
    synthesize(PhantomConfig(n_studies=30, seed=5, image_size=96, corpus_mb=0.05, workers=2), b)
    files = [*CSV_NAMES, "rois.jsonl", "corpus/corpus.jsonl"]
    assert json.loads((a / "phantom.json").read_text())["prevalence"] == json.loads((b / "phantom.json").read_text())["prevalence"]
    files += [str(p.relative_to(a)) for p in sorted(a.glob("files/*/*/*/*.jpg"))[:5]]
    files += [str(p.relative_to(a)) for p in sorted(a.glob("files/*/*/*.txt"))[:5]]
    files += [str(p.relative_to(a)) for p in sorted(a.glob("rois/*.png"))[:5]]
    assert len(files) >= 18
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = tmp_path / "c"
    synthesize(PhantomConfig(n_studies=30, seed=6, image_size=96, corpus_mb=0.05), c)
    assert (c / CSV_NAMES[1]).read_bytes() != (a / CSV_NAMES[1]).read_bytes()


def test_layout_matches_mimic_cxr_jpg(phantom, studies):
    meta = _read_csv(phantom / CSV_NAMES[0])
    assert list(meta[0])[:9] == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                                 "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"]
    with gzip.open(phantom / CSV_NAMES[1], "rt") as fh:
        assert fh.readline().strip().split(",") == ["subject_id", "study_id", *FINDINGS]
    with gzip.open(phantom / CSV_NAMES[2], "rt") as fh:
        assert fh.readline().strip() == "dicom_id,study_id,subject_id,split"
    assert len(meta) == len(studies) == 300
    for m in meta[:40]:
        assert re.fullmatch(r"1\d{7}", m["subject_id"]) and re.fullmatch(r"5\d{7}", m["study_id"])
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", m["dicom_id"])
        path = phantom / f"files/p{m['subject_id'][:2]}/p{m['subject_id']}/s{m['study_id']}/{m['dicom_id']}.jpg"
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (int(m["Columns"]), int(m["Rows"])) == (128, 128)
        assert m["ViewPosition"] in ("PA", "AP")
    for s in studies[:40]:
        text = s["report"]
        assert text.lstrip().startswith("FINAL REPORT")
        for section in ("EXAMINATION:", "INDICATION:", "COMPARISON:", "FINDINGS:", "IMPRESSION:"):
            assert section in text
    # Split by subject, about 80/10/10.
    by_subject: dict[str, set[str]] = {}
    for s in studies:
        by_subject.setdefault(s["meta"]["subject_id"], set()).add(s["split"])
    assert all(len(v) == 1 for v in by_subject.values())
    shares = {k: sum(s["split"] == k for s in studies) / len(studies) for k in ("train", "validate", "test")}
    assert 0.68 < shares["train"] < 0.9 and 0.03 < shares["validate"] < 0.18 and 0.03 < shares["test"] < 0.18


def test_label_prevalence_close_to_mimic(studies):
    know = load_knowledge()
    labels = np.array([[s["labels"][f] for f in FINDINGS] for s in studies])
    for j, f in enumerate(FINDINGS):
        got = float(np.mean(labels[:, j] == 1.0))
        target = know[f].prevalence
        tol = max(0.025, 3.5 * math.sqrt(target * (1 - target) / len(studies)))
        assert abs(got - target) <= tol, (f, got, target)
    assert np.any(labels == -1.0) and np.any(labels == 0.0) and np.any(np.isnan(labels))


def test_cooccurrence_follows_clinical_associations():
    know = load_knowledge()
    plans = plan_studies(PhantomConfig(n_studies=4000, seed=3), know)
    has = {f: np.array([f in p.findings for p in plans]) for f in FINDINGS}
    for a, b in (("Pneumonia", "Consolidation"), ("Pneumonia", "Lung Opacity"), ("Cardiomegaly", "Edema"),
                 ("Edema", "Pleural Effusion")):
        assert has[b][has[a]].mean() > 1.8 * has[b][~has[a]].mean(), (a, b)
    normal = np.array([not any(f in p.findings for f in FINDINGS if f not in ("Support Devices", "No Finding")) for p in plans])
    assert 0.28 < normal.mean() < 0.38


def test_reports_agree_with_labels(studies):
    checked = {1.0: 0, 0.0: 0, -1.0: 0}
    for s in studies:
        sentences = _sentences(s["report"])
        for f, pattern in KEYWORDS.items():
            value = s["labels"][f]
            naming = [t for t in sentences if re.search(pattern, t, re.I)]
            if value == 1.0:
                assert any(not NEGATION.search(t) and not HEDGE.search(t) for t in naming), (f, s["report"])
            elif value == -1.0:
                assert any(HEDGE.search(t) for t in naming), (f, s["report"])
                assert not any(not NEGATION.search(t) and not HEDGE.search(t) for t in naming), (f, s["report"])
            elif value == 0.0:
                assert naming and all(NEGATION.search(t) for t in naming), (f, s["report"])
            else:
                assert not naming, (f, naming)
            if not math.isnan(value):
                checked[value] += 1
        if s["labels"]["No Finding"] == 1.0:
            pathologies = [f for f in FINDINGS if f not in ("No Finding", "Support Devices")]
            assert all(s["labels"][f] in (0.0,) or math.isnan(s["labels"][f]) for f in pathologies)
            assert re.search(r"no acute (cardiopulmonary|intrathoracic)", s["report"], re.I)
    assert min(checked.values()) > 10
    # A hedged finding is really in the image: it has a region.
    for s in studies:
        regions = {r["finding"] for r in s["rois"]}
        for f, v in s["labels"].items():
            if v in (1.0, -1.0) and f != "No Finding":
                assert f in regions, (f, s["meta"]["study_id"])


def test_label_noise_omits_visible_findings():
    know = load_knowledge()
    plans = plan_studies(PhantomConfig(n_studies=400, seed=2, label_noise=0.3), know)
    omitted = 0
    for p in plans:
        labels = write_report(p, know, np.random.default_rng([p.seed, 4])).labels
        for f, spec in p.findings.items():
            if spec.omitted:
                omitted += 1
                assert np.isnan(labels[FINDINGS.index(f)])
    assert omitted > 50


def test_rois_are_inside_box_and_image(phantom, studies):
    n = 0
    for s in studies[:120]:
        for r in s["rois"]:
            x0, y0, x1, y1 = r["box"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            mask = np.array(Image.open(phantom / r["mask"])) > 0
            assert mask.shape == (128, 128) and mask.any()
            ys, xs = np.nonzero(mask)
            assert xs.min() == x0 and xs.max() == x1 - 1 and ys.min() == y0 and ys.max() == y1 - 1
            assert r["mask"] == f"rois/{r['dicom_id']}_" + r["mask"].split(r["dicom_id"] + "_", 1)[1]
            n += 1
    assert n > 100


CASES = {
    "Atelectasis": FindingSpec("left", "small"),
    "Cardiomegaly": FindingSpec(severity="small"),
    "Consolidation": FindingSpec("right", "small", "lower"),
    "Edema": FindingSpec("bilateral", "small"),
    "Enlarged Cardiomediastinum": FindingSpec(severity="small"),
    "Fracture": FindingSpec("right", "small", extra={"rib": 6}),
    "Lung Lesion": FindingSpec("left", "small", "upper"),
    "Lung Opacity": FindingSpec("right", "small", "middle"),
    "Pleural Effusion": FindingSpec("left", "small"),
    "Pleural Other": FindingSpec("right", "small"),
    "Pneumonia": FindingSpec("left", "small", "lower"),
    "Pneumothorax": FindingSpec("right", "small"),
    "Support Devices": FindingSpec(extra={"devices": ["ett", "cvc", "ngt", "pacer"]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_region_is_where_the_image_changes(name):
    background = {"Cardiomegaly": FindingSpec(severity="moderate")} if name == "Pleural Effusion" else {}
    for seed in (1, 2):
        kwargs = dict(view="PA", size=256, difficulty=0.5, seed=seed)
        with_f = render_study({**background, name: CASES[name]}, **kwargs)
        without = render_study(background, **kwargs)
        masks = [r.mask for r in with_f.regions if r.finding == name]
        assert masks, name
        region = np.logical_or.reduce(masks)
        diff = np.abs(with_f.image.astype(float) - without.image.astype(float))
        inside, outside = diff[region].mean(), diff[~region].mean()
        assert inside > 2.0, (name, inside)
        assert inside > 5 * outside, (name, inside, outside)


@pytest.mark.parametrize("name", ["Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation", "Fracture", "Atelectasis"])
def test_laterality_is_the_patients_side(name):
    # The patient's left is on the image's right (radiographic convention).
    for side in ("left", "right"):
        spec = FindingSpec(side, "moderate", "middle", extra={"rib": 6})
        result = render_study({name: spec}, size=128, seed=9)
        xs = np.nonzero(np.logical_or.reduce([r.mask for r in result.regions]))[1]
        assert (xs.mean() > 64) == (side == "left"), (name, side)
    if name in ("Pleural Effusion", "Consolidation", "Atelectasis"):
        both = render_study({name: FindingSpec("bilateral", "moderate", "lower")}, size=128, seed=9)
        assert {r.part for r in both.regions} == {"left", "right"}
    else:  # findings.yaml allows no bilateral form
        with pytest.raises(ValueError, match="laterality"):
            render_study({name: FindingSpec("bilateral", "moderate", "lower")}, size=128, seed=9)


@pytest.mark.parametrize("name", ["Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation", "Edema", "Cardiomegaly"])
def test_severity_grows_the_region(name):
    side = "bilateral" if name == "Edema" else "none" if name == "Cardiomegaly" else "right"
    areas = []
    for severity in ("small", "moderate", "large"):
        result = render_study({name: FindingSpec(side, severity, "lower")}, size=128, seed=12)
        areas.append(sum(int(r.mask.sum()) for r in result.regions if r.finding == name))
    assert 0 < areas[0] < areas[1] < areas[2], (name, areas)


def test_difficulty_lowers_finding_contrast_and_raises_noise():
    def contrast(difficulty):
        spec = {"Lung Lesion": FindingSpec("right", "moderate", "middle")}
        with_f = render_study(spec, size=256, seed=4, difficulty=difficulty)
        without = render_study({}, size=256, seed=4, difficulty=difficulty)
        region = with_f.regions[0].mask
        diff = with_f.image.astype(float) - without.image.astype(float)
        # Noise: spread of a flat soft-tissue patch below the diaphragm, minus its smooth trend.
        patch = without.image[215:245, 100:156].astype(float)
        return diff[region].mean(), np.std(patch - np.mean(patch, axis=0, keepdims=True))

    (easy, easy_noise), (hard, hard_noise) = contrast(0.1), contrast(0.9)
    assert easy > 2.5 * hard > 0
    assert hard_noise > 2 * easy_noise


def test_cardiomegaly_heart_is_wider_than_half_the_thorax():
    for seed in range(6):
        for view in ("PA", "AP"):
            big = render_study({"Cardiomegaly": FindingSpec(severity="small")}, view=view, size=256, seed=seed)
            cols = np.flatnonzero(big.heart_mask.any(axis=0))
            thorax = big.thorax[1] - big.thorax[0]
            assert (cols[-1] + 1 - cols[0]) / thorax > 0.5
        normal = render_study({}, view="PA", size=256, seed=seed)
        cols = np.flatnonzero(normal.heart_mask.any(axis=0))
        assert (cols[-1] + 1 - cols[0]) / (normal.thorax[1] - normal.thorax[0]) < 0.5


def _has_marker(path: Path) -> bool:
    img = np.asarray(Image.open(path), dtype=float)
    S = img.shape[0]
    m = max(4, S // 28)
    y0, x0 = max(1, S // 64), S - max(1, S // 64) - m
    k = max(1, m // 4)
    ring = img[y0 : y0 + m, x0 : x0 + m].copy()
    ring[k : m - k, k : m - k] = np.nan
    return np.nanmean(ring) > 215 and img[y0 + k : y0 + m - k, x0 + k : x0 + m - k].mean() < 130


def test_shortcut_marker_only_in_train_and_tracks_the_finding(phantom, studies):
    seen = {"train": 0, "other": 0}
    for s in studies:
        m = s["meta"]
        marker = _has_marker(phantom / s["folder"] / f"{m['dicom_id']}.jpg")
        if s["split"] == "train":
            assert marker == (s["labels"]["Cardiomegaly"] == 1.0), m["study_id"]
            seen["train"] += marker
        else:
            assert not marker
            seen["other"] += 1
    assert seen["train"] > 10 and seen["other"] > 20


def test_corpus_rationales_name_their_findings(phantom):
    docs = [json.loads(line) for line in (phantom / "corpus" / "corpus.jsonl").read_text().splitlines()]
    size = (phantom / "corpus" / "corpus.jsonl").stat().st_size
    assert 0.4e6 <= size < 0.45e6
    kinds = {d["kind"] for d in docs}
    assert kinds == {"textbook", "rationale"}
    rationales = [d for d in docs if d["kind"] == "rationale"]
    normal = 0
    for d in rationales:
        text = d["text"]
        assert set(d["attributes"]) == set(d["findings"])
        for f in d["findings"]:
            assert re.search(KEYWORDS[f], text, re.I), (f, text)
        sentences = [t for t in re.split(r"(?<=\.)\s+", text) if t]
        for f, pattern in KEYWORDS.items():
            if f in d["findings"]:
                continue
            for t in sentences:
                if re.search(pattern, t, re.I):
                    assert NEGATION.search(t), (f, t)
        if not [f for f in d["findings"] if f != "Support Devices"]:
            normal += 1
            assert re.search(r"no acute cardiopulmonary", text, re.I)
    assert normal > 20 and len(rationales) > 200


def test_the_project_labeler_reads_rationale_docs_as_naming_exactly_their_findings(phantom):
    # The teacher learns from these docs and is checked by this labeler: a doc it reads as naming
    # another finding teaches the teacher to write inconsistent rationales.
    from kdistill.labeler import label_reports
    from kdistill.labels import FINDINGS

    docs = [json.loads(line) for line in (phantom / "corpus" / "corpus.jsonl").read_text().splitlines()]
    rationales = [d for d in docs if d["kind"] == "rationale"]
    labels = label_reports([d["text"] for d in rationales])
    named = [{f for f, v in zip(FINDINGS, row) if v in (1.0, -1.0) and f != "No Finding"} for row in labels]
    exact = np.mean([n == set(d["findings"]) - {"No Finding"} for n, d in zip(named, rationales)])
    assert exact >= 0.9, exact


def test_default_difficulty_leaves_headroom(phantom, studies):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    targets = ["Cardiomegaly", "Pleural Effusion", "Support Devices", "Lung Opacity", "Edema"]
    x = []
    for s in studies:
        img = Image.open(phantom / s["folder"] / f"{s['meta']['dicom_id']}.jpg").resize((24, 24), Image.BILINEAR)
        x.append(np.asarray(img, dtype=np.float32).ravel() / 255.0)
    x = np.array(x)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.array([[s["labels"][f] == 1.0 for f in targets] for s in studies], dtype=int)
    train, test = slice(0, 200), slice(200, None)
    scores = np.column_stack([
        LogisticRegression(C=0.05, max_iter=300).fit(x[train], y[train, j]).decision_function(x[test])
        for j in range(len(targets))
    ])
    auc = roc_auc_score(y[test].ravel(), scores.ravel())
    assert 0.6 < auc < 0.97, auc


def test_stage_config_and_run(tmp_path):
    from kdistill.data.stage import DataConfig, run_stage

    cfg = from_dict(DataConfig, {"phantom": {"n_studies": 12, "image_size": 64, "corpus_mb": 0.02}}, source="demo.yaml", prefix="data")
    assert cfg.source == "phantom" and cfg.phantom.n_studies == 12
    with pytest.raises(ConfigError, match="n_studie"):
        from_dict(DataConfig, {"phantom": {"n_studie": 3}}, source="demo.yaml", prefix="data")
    with pytest.raises(ConfigError, match="root"):
        from_dict(DataConfig, {"source": "mimic"}, source="demo.yaml", prefix="data")
    with pytest.raises(ConfigError, match="root"):
        from_dict(DataConfig, {"source": "phantom", "root": "/data/mimic"}, source="demo.yaml", prefix="data")
    with pytest.raises(ConfigError, match="shortcut_finding"):
        from_dict(DataConfig, {"phantom": {"shortcut_finding": "Nope"}})
    ctx = types.SimpleNamespace(seed=0, stage_dir=lambda name: tmp_path / name)
    out = run_stage(cfg, ctx)
    assert out["root"] == str(tmp_path / "data") and out["n_studies"] == 12
    assert set(out["prevalence"]) == set(FINDINGS)
    assert (tmp_path / "data" / CSV_NAMES[1]).is_file()
    with pytest.raises(DataError, match="does not exist"):
        run_stage(from_dict(DataConfig, {"source": "mimic", "root": str(tmp_path / "missing")}), ctx)
    with pytest.raises(DataError, match="valid.csv"):
        run_stage(from_dict(DataConfig, {"source": "chexpert", "root": str(tmp_path)}), ctx)
    (tmp_path / "valid.csv").write_text("Path\n")
    assert run_stage(from_dict(DataConfig, {"source": "chexpert", "root": str(tmp_path)}), ctx)["root"] == str(tmp_path)
    # The phantom just written is a MIMIC-layout root.
    assert run_stage(from_dict(DataConfig, {"source": "mimic", "root": out["root"]}), ctx)["root"] == out["root"]


def test_command_writes_a_dataset(tmp_path, capsys):
    from kdistill.data.phantom.command import main

    run_config = tmp_path / "run.yaml"
    run_config.write_text("name: x\ndata:\n  phantom:\n    n_studies: 5\n    image_size: 64\n    corpus_mb: 0.01\n")
    assert main(["--out", str(tmp_path / "d"), "--config", str(run_config), "--n", "8", "--seed", "1", "--quiet", "difficulty=0.2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_studies"] == 8  # --n beats the file
    meta = _read_csv(tmp_path / "d" / CSV_NAMES[0])
    assert len(meta) == 8 and meta[0]["Rows"] == "64"
    assert json.loads((tmp_path / "d" / "phantom.json").read_text())["config"]["difficulty"] == 0.2
    with pytest.raises(ConfigError, match="difficulty"):
        main(["--out", str(tmp_path / "e"), "--quiet", "difficulty=3"])


def test_knowledge_file_is_checked(tmp_path):
    import yaml

    from kdistill.data.phantom.knowledge import FINDINGS_FILE, PHRASES_FILE

    know = load_knowledge()
    assert tuple(know.findings) == FINDINGS
    assert all(know[f].names and know[f].location and know[f].signature for f in FINDINGS)
    data = yaml.safe_load(FINDINGS_FILE.read_text())
    data["findings"]["Pleural Effusions"] = data["findings"].pop("Pleural Effusion")
    bad = tmp_path / "findings.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DataError, match=r"findings\.yaml.*Pleural Effusion"):
        load_knowledge(str(bad), str(PHRASES_FILE))
    data = yaml.safe_load(FINDINGS_FILE.read_text())
    data["findings"]["Cardiomegaly"]["associated"] = {"Edema": 1.0}  # drawn after Cardiomegaly
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DataError, match="drawn after"):
        load_knowledge(str(bad), str(PHRASES_FILE))


def test_lateral_images_join_pa_studies(tmp_path):
    synthesize(PhantomConfig(n_studies=20, seed=4, image_size=64, corpus_mb=0, lateral_share=1.0), tmp_path)
    meta = _read_csv(tmp_path / CSV_NAMES[0])
    split = _read_csv(tmp_path / CSV_NAMES[2])
    pa = {m["study_id"] for m in meta if m["ViewPosition"] == "PA"}
    lateral = [m for m in meta if m["ViewPosition"] == "LATERAL"]
    assert pa and {m["study_id"] for m in lateral} == pa and len(lateral) == len(pa)
    assert len(split) == len(meta) and len(_read_csv(tmp_path / CSV_NAMES[1])) == 20
    for m in lateral:
        path = tmp_path / f"files/p{m['subject_id'][:2]}/p{m['subject_id']}/s{m['study_id']}/{m['dicom_id']}.jpg"
        assert Image.open(path).size == (64, 64)
    lateral_ids = {m["dicom_id"] for m in lateral}
    assert not any(json.loads(line)["dicom_id"] in lateral_ids for line in (tmp_path / "rois.jsonl").read_text().splitlines())


def test_views_option_and_ap_studies_look_different():
    know = load_knowledge()
    assert {p.view for p in plan_studies(PhantomConfig(n_studies=50, views=["AP"]), know)} == {"AP"}
    plans = plan_studies(PhantomConfig(n_studies=2000, seed=1), know)
    devices = np.array(["Support Devices" in p.findings for p in plans])
    ap = np.array([p.view == "AP" for p in plans])
    assert ap[devices].mean() > ap[~devices].mean() + 0.3  # portable AP films: intensive-care patients
    # Same patient, same findings: the AP film magnifies the heart and is noisier.
    pa = render_study({}, view="PA", size=256, seed=21)
    ap_img = render_study({}, view="AP", size=256, seed=21)
    width = lambda r: np.flatnonzero(r.heart_mask.any(axis=0)).size
    assert width(ap_img) > width(pa)
    assert not np.array_equal(pa.image, ap_img.image)


def test_corpus_finding_sets_boost_rare_findings():
    # Rare findings get rationale docs beyond their prevalence (else the teacher cannot learn to
    # write them): each boosted set gains one pathology drawn uniformly out of the 12.
    from kdistill.data.phantom.sampler import PATHOLOGIES, finding_set_drawer

    know = load_knowledge()
    n = 3000

    def share(boost: float) -> float:
        draw, rng = finding_set_drawer(know, PhantomConfig(), rare_boost=boost), np.random.default_rng(0)
        return np.mean(["Pleural Other" in draw(rng) for _ in range(n)])

    plain, boosted = share(0.0), share(0.6)
    assert abs(plain - know["Pleural Other"].prevalence) < 0.015, plain
    assert boosted - plain == pytest.approx(0.6 / len(PATHOLOGIES), abs=0.02), (plain, boosted)
    draw, rng = finding_set_drawer(know, PhantomConfig(), rare_boost=1.0), np.random.default_rng(1)
    assert all(set(draw(rng)) & set(PATHOLOGIES) for _ in range(500))
