"""``kdistill eval``: predictions files, bad input, flat metrics.json, summary/plots, noise robustness,
and the pipeline stage (with a stand-in student checkpoint)."""
from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kdistill.scoring import choose_thresholds
from eval import classification
from eval import run as R
from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX, FINDINGS

N_TEST, N_VAL = 16, 10
REPORTS = {
    "Edema": "There is mild pulmonary edema.",
    "Cardiomegaly": "The heart is enlarged.",
}


def _labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.choice([1.0, 0.0, np.nan], size=(n, 14), p=[0.35, 0.35, 0.3])
    labels[0], labels[1] = 1.0, 0.0  # both classes everywhere ...
    labels[2, 0] = -1.0  # ... and one uncertain label
    labels[:, FINDING_INDEX["Fracture"]] = 0.0  # ... except Fracture: a single class
    return labels


def _make_root(root: Path) -> dict[str, np.ndarray]:
    """A tiny MIMIC-CXR-JPG tree: N_TEST test and N_VAL validate studies, one 8x8 JPEG each."""
    from PIL import Image

    labels = {"test": _labels(N_TEST, 0), "validate": _labels(N_VAL, 1)}
    meta, split_rows, chex = [], [], []
    k = 0
    for split, lab in labels.items():
        for i, row in enumerate(lab):
            subject, study, dicom = f"1{k:07d}", f"5{k:07d}", f"d{k:04d}"
            folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 40 + 10 * (k % 10), np.uint8)).save(folder / f"{dicom}.jpg")
            said = [REPORTS[f] for f in REPORTS if row[FINDING_INDEX[f]] == 1.0] or ["No acute findings."]
            (folder.parent / f"s{study}.txt").write_text(f"FINDINGS: {' '.join(said)}\nIMPRESSION: Study {k}.\n")
            meta.append([dicom, subject, study, "PA", 8, 8])
            split_rows.append([dicom, study, subject, split])
            chex.append([subject, study] + ["" if math.isnan(v) else f"{v:.1f}" for v in row])
            k += 1
    for name, header, rows in (
        ("mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"], meta),
        ("mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows),
        ("mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *FINDINGS], chex),
    ):
        with (root / name).open("w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    return labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    labels = _make_root(root)
    ids = {"test": [f"5{k:07d}" for k in range(N_TEST)], "validate": [f"5{k:07d}" for k in range(N_TEST, N_TEST + N_VAL)]}
    return root, labels, ids


def _noisy_probs(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 * np.nan_to_num(labels == 1.0) + 0.6 * rng.random(labels.shape), 0, 1).round(3)


def _write_csv(path: Path, ids, probs, reports=None, header=None, mutate=None):
    header = header or ["study_id", *FINDINGS, "report"]
    rows = []
    for i, sid in enumerate(ids):
        row = {"study_id": sid, **{f: f"{p}" for f, p in zip(FINDINGS, probs[i])},
               "report": reports[i] if reports else "The heart is enlarged."}
        rows.append([row.get(h, "") for h in header])
    if mutate:
        mutate(rows)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


# --------------------------------------------------------------------------- reading predictions


def test_csv_and_jsonl_predictions_agree(tmp_path):
    probs = np.random.default_rng(0).random((3, 14)).round(4)
    ids = ["501", "502", "503"]
    a = R.read_predictions(_write_csv(tmp_path / "p.csv", ids, probs))
    lines = [json.dumps({"study_id": ids[0], "probs": probs[0].tolist(), "report": "The heart is enlarged."}),
             json.dumps({"study_id": ids[1], "probs": dict(zip(FINDINGS, probs[1].tolist())), "report": "The heart is enlarged."}),
             json.dumps({"study_id": ids[2], **dict(zip(FINDINGS, probs[2].tolist())), "report": "The heart is enlarged."})]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    b = R.read_predictions(tmp_path / "p.jsonl")
    assert a.study_ids == b.study_ids == ids
    np.testing.assert_allclose(a.probs, probs)
    np.testing.assert_allclose(b.probs, probs)
    assert a.reports == b.reports and a.rationales is None


def _expect_data_error(path: Path, *words: str):
    with pytest.raises(DataError) as err:
        R.read_predictions(path)
    assert err.value.path == str(path)
    for word in words:
        assert word in str(err.value)


def test_nan_probability_is_a_data_error(tmp_path):
    probs = np.full((2, 14), 0.5)
    probs[1, FINDING_INDEX["Edema"]] = np.nan
    _expect_data_error(_write_csv(tmp_path / "p.csv", ["1", "2"], probs), "line 3", "Edema", "nan")


def test_inf_probability_is_a_data_error(tmp_path):
    probs = np.full((2, 14), 0.5)
    probs[0, 0] = np.inf
    _expect_data_error(_write_csv(tmp_path / "p.csv", ["1", "2"], probs), "Atelectasis", "inf")


def test_probability_outside_unit_interval_is_a_data_error(tmp_path):
    probs = np.full((2, 14), 0.5)
    probs[0, 3] = 1.5
    _expect_data_error(_write_csv(tmp_path / "p.csv", ["1", "2"], probs), "outside [0, 1]")


def test_missing_finding_column_is_a_data_error(tmp_path):
    header = ["study_id", *[f for f in FINDINGS if f != "Pneumonia"], "report"]
    _expect_data_error(_write_csv(tmp_path / "p.csv", ["1"], np.full((1, 14), 0.5), header=header),
                       "missing column", "Pneumonia")


def test_wrong_number_of_fields_is_a_data_error(tmp_path):
    path = _write_csv(tmp_path / "p.csv", ["1", "2"], np.full((2, 14), 0.5), mutate=lambda rows: rows[1].append("0.3"))
    _expect_data_error(path, "line 3", "17 fields", "16")


def test_empty_generated_report_is_a_data_error(tmp_path):
    path = _write_csv(tmp_path / "p.csv", ["1", "2"], np.full((2, 14), 0.5), reports=["Heart enlarged.", "  "])
    _expect_data_error(path, "empty generated report", "study 2")


def test_duplicate_study_is_a_data_error(tmp_path):
    _expect_data_error(_write_csv(tmp_path / "p.csv", ["1", "1"], np.full((2, 14), 0.5)), "more than once", "1")


def _reference(ids, labels, split="test", images=None):
    batches = None
    if images is not None:
        def batches(rows, batch_size, size=None):
            for s in range(0, len(rows), batch_size):
                yield images[list(rows[s : s + batch_size])]
    return R.ReferenceSet("ROOT", split, list(ids), labels, ["The heart is enlarged."] * len(ids), batches)


def test_unknown_study_ids_are_a_data_error():
    preds = R.Predictions("preds.csv", ["1", "99"], np.full((2, 14), 0.5))
    with pytest.raises(DataError, match="not in the 'test' split of ROOT: 99") as err:
        R.align(preds, _reference(["1", "2"], np.zeros((2, 14))))
    assert err.value.path == "preds.csv"


def test_studies_without_predictions_are_an_error_unless_allowed():
    preds = R.Predictions("preds.csv", ["2"], np.full((1, 14), 0.5))
    ref = _reference(["1", "2", "3"], np.arange(42, dtype=float).reshape(3, 14))
    with pytest.raises(DataError, match="no prediction for 2 of the 3"):
        R.align(preds, ref)
    _, aligned, missing = R.align(preds, ref, allow_missing=True)
    assert missing == 2 and aligned.study_ids == ["2"] and aligned.labels[0, 0] == 14.0


# --------------------------------------------------------------------------- the command


def _no_nan(metrics: dict) -> None:
    for key, value in metrics.items():
        assert not (isinstance(value, float) and not math.isfinite(value)), key


def test_kdistill_eval_on_a_predictions_file(tiny, tmp_path, capsys):
    root, labels, ids = tiny
    probs = _noisy_probs(labels["test"], 0)
    reports = ["The heart is enlarged." if labels["test"][i, FINDING_INDEX["Cardiomegaly"]] == 1 else "No acute findings."
               for i in range(N_TEST)]
    pred = _write_csv(tmp_path / "test.csv", ids["test"], probs, reports)
    out = tmp_path / "out"
    assert R.main(["--predictions", str(pred), "--data", str(root), "--out", str(out), "--bootstrap", "30"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _no_nan(metrics)
    # known answer: micro-AUC is sklearn's over the counted entries (uncertain left out, blank negative)
    y, mask = classification.targets(labels["test"])
    assert metrics["test/auc_micro_14"] == pytest.approx(roc_auc_score(y[mask], probs[mask]), abs=1e-12)
    j = FINDING_INDEX["Edema"]
    assert metrics["test/auc/Edema"] == pytest.approx(roc_auc_score(y[mask[:, j], j], probs[mask[:, j], j]), abs=1e-12)
    assert metrics["test/skipped/auc/Fracture"] == "single class"
    assert metrics["test/auc_micro_14_ci_low"] <= metrics["test/auc_micro_14"] <= metrics["test/auc_micro_14_ci_high"]
    assert "needs a checkpoint" in metrics["test/skipped/noise_robustness"]
    assert not any(k.startswith("test/noise_0") for k in metrics)
    assert metrics["test/thresholds/Edema"] == 0.5 and "no validation predictions" in metrics["test/thresholds_source"]
    for key in ("test/bleu_1", "test/bleu_4", "test/rouge_l", "test/cider_d"):
        assert isinstance(metrics[key], float)
    # the rule-based labeler on both sides: generated reports say "enlarged" exactly when the
    # reference does, and never mention edema while some references do
    assert metrics["test/labeler"] == "chexpert_rules_f1"
    assert metrics["test/chexpert_rules_f1/f1/Cardiomegaly"] == 1.0
    assert metrics["test/chexpert_rules_f1/f1/Edema"] == 0.0
    assert isinstance(metrics["test/chexpert_rules_f1/uncertain_positive/macro_5"], float)
    assert not any(k.startswith("test/chexbert_f1/") for k in metrics)  # never mixed
    assert "no 'rationale' column" in metrics["test/skipped/rationale_consistency"]
    summary = (out / "summary.md").read_text()
    assert "micro-AUC, 14 findings" in summary and "| Fracture | skipped (single class)" in summary
    assert "METEOR" in summary and "needs a checkpoint" in summary
    assert summary in capsys.readouterr().out
    for png in ("roc.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thresholds_are_chosen_on_validation_predictions(tiny, tmp_path):
    root, labels, ids = tiny
    test = _write_csv(tmp_path / "test.csv", ids["test"], _noisy_probs(labels["test"], 0))
    val_probs = _noisy_probs(labels["validate"], 1)
    val = _write_csv(tmp_path / "val.csv", ids["validate"], val_probs)
    out = tmp_path / "out"
    assert R.main(["--predictions", str(test), "--validate-predictions", str(val), "--data", str(root),
                   "--out", str(out), "n_bootstrap=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    y, mask = classification.targets(labels["validate"])
    expected, _, defaulted = choose_thresholds(val_probs, y, mask, policy=R.EvalConfig().threshold_policy)
    assert "Fracture" in defaulted and metrics["test/thresholds/Fracture"] == 0.5
    for j, finding in enumerate(FINDINGS):
        assert metrics[f"test/thresholds/{finding}"] == pytest.approx(expected[j])
    assert str(val) in metrics["test/thresholds_source"]


def test_unknown_study_in_the_predictions_file_fails_the_command(tiny, tmp_path):
    root, labels, ids = tiny
    pred = _write_csv(tmp_path / "p.csv", ids["test"][:-1] + ["59999999"], _noisy_probs(labels["test"], 0))
    with pytest.raises(DataError, match="59999999"):
        R.main(["--predictions", str(pred), "--data", str(root), "--out", str(tmp_path / "o")])


# --------------------------------------------------------------------------- noise, labeler, stage


def test_noise_robustness_adds_gaussian_noise_of_each_sigma():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((40, 14)) < 0.4, 1.0, 0.0)
    labels[0], labels[1] = 1.0, 0.0
    images = (0.3 + 0.4 * labels[:, None, :]).repeat(16, axis=1).astype(np.float32)  # (40, 16, 14)
    seen = []

    def model(batch):
        seen.append(batch)
        return batch.mean(axis=1)  # finding j's probability: column j's brightness

    ref = _reference([str(i) for i in range(40)], labels, images=images)
    preds = R.Predictions("model", ref.study_ids, model(images))
    seen.clear()
    metrics, _ = R.evaluate(preds, ref, n_bootstrap=0,
                            noise=(model, lambda: ref.image_batches(range(40), 16, None), (0.01, 0.1)))
    noisy = {s: np.concatenate(seen[k * 3:(k + 1) * 3]) for k, s in enumerate((0.01, 0.1))}  # 3 batches per sigma
    for sigma, batch in noisy.items():
        assert (batch - images).std() == pytest.approx(sigma, rel=0.05)
    assert metrics["test/auc_micro_14"] == 1.0
    assert metrics["test/noise_0.01/auc_micro_14"] == 1.0  # margin 0.4 >> noise of a 16-pixel mean
    clean_keys = {k[len("test/"):] for k in metrics if k.startswith("test/") and "/" not in k[5:] and isinstance(metrics[k], float)}
    for sigma in ("0.01", "0.1"):
        assert {"auc_micro_14", "auc_macro_14", "auc_micro_5", "f1_micro_14", "ece"} <= {
            k.split("/", 2)[2] for k in metrics if k.startswith(f"test/noise_{sigma}/")}
    assert "auc_micro_14" in clean_keys and "test/skipped/noise_robustness" not in metrics


def test_report_metrics_use_the_labeler_name_and_rationales():
    def labeler(texts):
        return np.stack([np.where(np.arange(14) == FINDING_INDEX["Cardiomegaly"], 1.0 if "enlarged" in t else 0.0, np.nan)
                         for t in texts])

    labels = np.zeros((3, 14))
    labels[0, FINDING_INDEX["Cardiomegaly"]] = 1.0
    labels[1, :] = 1.0
    ref = _reference(["1", "2", "3"], labels)
    ref.reports = ["The heart is enlarged.", "The heart is enlarged.", "Normal heart."]
    preds = R.Predictions("p.csv", ["1", "2", "3"], np.full((3, 14), 0.5),
                          reports=["FINDINGS: The heart is enlarged.", "Normal heart.", "Normal heart."],
                          rationales=["heart enlarged", "", "normal"])
    metrics, _ = R.evaluate(preds, ref, n_bootstrap=0, labeler=(labeler, "chexpert_rules_f1"))
    # Cardiomegaly: generated positive for study 1 only, reference for 1 and 2 -> tp 1, fn 1
    assert metrics["test/chexpert_rules_f1/micro_14"] == pytest.approx(2 / 3)
    assert metrics["test/labeler"] == "chexpert_rules_f1"
    assert not any("chexbert_f1" in k for k in metrics)
    # headers are stripped before NLG: studies 1 and 3 are identical to their references; study 2
    # "normal heart" vs "the heart is enlarged": LCS 1, P 1/2, R 1/4, beta 1.2
    second = 2.44 * 0.5 * 0.25 / (0.25 + 1.44 * 0.5)
    assert metrics["test/rouge_l"] == pytest.approx((1 + second + 1) / 3)
    # rationale of study 1 mentions Cardiomegaly (study has it); study 2's rationale is empty -> left out;
    # study 3 mentions nothing, its labels mention nothing
    assert metrics["test/rationale_consistency/precision"] == 1.0
    assert metrics["test/rationale_consistency/recall"] == 1.0


class _FakeModel:
    """Stands in for a student checkpoint: probabilities from image brightness, fixed reports."""

    image_size = 8

    def predict(self, images):
        images = np.asarray(images, dtype=np.float64)
        assert images.shape[1:] == (8, 8)
        level = images.mean(axis=(1, 2))
        probs = np.clip(np.repeat(level[:, None], 14, axis=1), 0, 1)
        n = len(images)
        return {"probs": probs, "reports": ["The heart is enlarged."] * n, "rationales": ["enlarged heart"] * n,
                "maps": np.zeros((n, 14, 8, 8)), "decisions": probs >= 0.5}


@pytest.mark.parametrize("source", ["dataset root", "prepared cache"])
def test_pipeline_stage_scores_a_checkpoint_with_noise(tiny, tmp_path, monkeypatch, source):
    root, labels, ids = tiny
    fake = types.ModuleType("student")
    fake.load = lambda path: _FakeModel()
    monkeypatch.setitem(sys.modules, "student", fake)
    run_dir = tmp_path / "run"
    (run_dir / "student").mkdir(parents=True)
    (run_dir / "eval").mkdir()
    if source == "prepared cache":
        from kdistill.data.prepare import prepare

        prepare(root, run_dir / "prepared", size=8, workers=1)
    from kdistill.data.sources import open_source

    ctx = types.SimpleNamespace(stage_dir=lambda name: run_dir / {"prepare": "prepared"}.get(name, name),
                                data_root=root, data=open_source("mimic", root), seed=0)
    cfg = R.EvalConfig(n_bootstrap=5, noise_sigmas=[0.05])
    summary = R.run_stage(cfg, ctx)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    _no_nan(metrics)
    assert summary["auc_micro_14"] == metrics["test/auc_micro_14"]
    assert "test/noise_0.05/auc_micro_14" in metrics and "test/skipped/noise_robustness" not in metrics
    assert "validate" in metrics["test/thresholds_source"]  # no thresholds.json: chosen on the validate split
    # the stand-in's probability is the image brightness, the same for all 14 findings
    y, mask = classification.targets(labels["test"])
    level = np.array([(40 + 10 * (k % 10)) / 255 for k in range(N_TEST)])
    brightness = np.repeat(level[:, None], 14, axis=1)
    assert metrics["test/auc_micro_14"] == pytest.approx(roc_auc_score(y[mask], brightness[mask]), abs=0.02)
    assert (run_dir / "eval" / "summary.md").is_file()


def test_a_real_student_checkpoint_goes_through_the_adapter(tiny, tmp_path):
    """An untrained tiny student saved as a checkpoint: ``kdistill eval --checkpoint`` runs it on the
    split's images (predictions, thresholds.json, noise study) and writes every output."""
    pytest.importorskip("student.checkpoint")
    import torch

    from kdistill import config as cfglib
    from student import StudentConfig, create_student
    from kdistill.scoring import save_thresholds
    from student.checkpoint import save_tokenizer, save_weights
    from student.synthetic import TINY_MODEL, make_tokenizer

    root, labels, ids = tiny
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    cfg = cfglib.from_dict(StudentConfig, TINY_MODEL)
    model = create_student(cfg, tokenizer)
    ckpt = tmp_path / "student"
    save_weights(model.cfg, model.state_dict(), ckpt)
    save_tokenizer(tokenizer, ckpt)
    thresholds = np.linspace(0.3, 0.7, 14)
    save_thresholds(ckpt, thresholds)
    out = tmp_path / "out"
    assert R.main(["--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), "--bootstrap", "5",
                   "--noise", "0.05"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _no_nan(metrics)
    assert metrics["test/n_studies"] == N_TEST
    assert [metrics[f"test/thresholds/{f}"] for f in FINDINGS] == pytest.approx(thresholds.tolist())
    assert "thresholds.json" in metrics["test/thresholds_source"]
    assert "test/noise_0.05/auc_micro_14" in metrics
    assert (out / "summary.md").is_file() and (out / "roc.png").is_file()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    phantom_mod = pytest.importorskip("kdistill.data.phantom")
    root = tmp_path_factory.mktemp("phantom")
    phantom_mod.synthesize(phantom_mod.PhantomConfig(n_studies=120, seed=0, corpus_mb=0, image_size=64), root)
    return root


def test_kdistill_eval_on_the_phantom(phantom, tmp_path):
    """Predictions that separate the phantom's stated positives from everything else, and reports
    equal to the references: known answers for AUC, label policy, NLG and label F1."""
    from kdistill.data.mimic import load_studies

    studies = load_studies(phantom, splits=["test"])
    labels = np.array([s.labels for s in studies], dtype=float)
    assert (labels == -1).any()  # the phantom hedges some findings: the policy matters
    rng = np.random.default_rng(0)
    probs = np.where(labels == 1.0, 0.8, 0.0) + 0.2 * rng.random(labels.shape)  # positives above all others
    reports = [" ".join(p for p in (s.findings, s.impression) if p) for s in studies]
    pred = _write_csv(tmp_path / "p.csv", [s.study_id for s in studies], probs.round(6), reports)

    def run(*extra):
        out = tmp_path / ("out" + "_".join(extra))
        assert R.main(["--predictions", str(pred), "--data", str(phantom), "--out", str(out), "--bootstrap", "20",
                       *extra]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        _no_nan(metrics)
        return metrics

    metrics = run()
    assert metrics["test/auc_micro_14"] == 1.0 and metrics["test/auc_macro_14"] == 1.0  # uncertain left out
    assert metrics["test/bleu_4"] == pytest.approx(1.0, abs=1e-8) and metrics["test/rouge_l"] == pytest.approx(1.0)
    assert metrics["test/chexpert_rules_f1/micro_14"] == 1.0  # same text, same labels
    assert metrics["test/chexpert_rules_f1/uncertain_positive/micro_14"] == 1.0
    # beside it, every test study scored with the train split's prevalence (sklearn on the same entries)
    train = np.array([s.labels for s in load_studies(phantom, splits=["train"])], dtype=float)
    y_tr, m_tr = classification.targets(train)
    prevalence = (y_tr * m_tr).sum(0) / m_tr.sum(0)
    y, mask = classification.targets(labels)
    want = roc_auc_score(y[mask], np.broadcast_to(prevalence, y.shape)[mask])
    assert metrics["test/baseline/constant_prevalence/auc_micro_14"] == pytest.approx(want, abs=1e-12)
    assert 0.5 < want < 1.0
    # U-Ones: the hedged findings (low scores) become positives -> below 1, exactly sklearn's value
    ones = run("--uncertain", "ones")
    y, mask = classification.targets(labels, uncertain="ones")
    assert ones["test/auc_micro_14"] == pytest.approx(roc_auc_score(y[mask], probs.round(6)[mask]), abs=1e-12)
    assert ones["test/auc_micro_14"] < 1.0


def test_the_kdistill_command_reports_bad_input_with_the_file_name(tiny, tmp_path, capsys):
    from kdistill import cli

    root, labels, ids = tiny
    probs = _noisy_probs(labels["test"], 0)
    probs[0, 0] = np.nan
    pred = _write_csv(tmp_path / "bad.csv", ids["test"], probs)
    assert cli.main(["eval", "--predictions", str(pred), "--data", str(root), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"kdistill eval: error: {pred}: line 2 (study {ids['test'][0]}): probability for 'Atelectasis' is nan" in err
    assert not (tmp_path / "o" / "metrics.json").exists()
