"""The rule-based CheXpert-style labeler, its command, and the CheXbert loading path."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

from kdistill.errors import DataError
from kdistill.labeler import Labeler, Mention, aggregate, get_labeler, label_report, label_reports, mentions
from kdistill.labeler.command import CHEXPERT_COLUMNS, main as label_main, read_reports
from kdistill.labels import FINDING_INDEX, FINDINGS, NUM_FINDINGS

FIXTURE = Path(__file__).parent / "fixtures" / "labeler_sentences.yaml"
NAN = math.nan


def _fixture():
    items = yaml.safe_load(FIXTURE.read_text())
    return [(item["text"], {f: (NAN if v == "blank" else float(v)) for f, v in item["labels"].items()}) for item in items]


FIXTURE_ITEMS = _fixture()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _show(row: np.ndarray) -> dict[str, float]:
    return {f: float(v) for f, v in zip(FINDINGS, row) if not math.isnan(v)}


# ---------------------------------------------------------------- fixture: per sentence and F1
def test_fixture_is_large_and_covers_every_finding():
    assert len(FIXTURE_ITEMS) >= 100
    covered = {f for _, labels in FIXTURE_ITEMS for f, v in labels.items() if v == 1.0}
    assert covered == set(FINDINGS)  # every column, No Finding included, has a positive case


@pytest.mark.parametrize("text,expected", FIXTURE_ITEMS, ids=[t[:60] for t, _ in FIXTURE_ITEMS])
def test_fixture_sentence(text, expected):
    row = label_report(text)
    wrong = {f: (v, float(row[FINDING_INDEX[f]])) for f, v in expected.items() if not _same(v, float(row[FINDING_INDEX[f]]))}
    assert not wrong, f"(expected, got) {wrong}; all labels {_show(row)}; mentions {mentions(text)}"


def test_fixture_f1_and_agreement():
    texts = [t for t, _ in FIXTURE_ITEMS]
    predicted = label_reports(texts)
    truth, pred = [], []
    for row, (_, expected) in zip(predicted, FIXTURE_ITEMS):
        for f, v in expected.items():
            truth.append(v)
            pred.append(float(row[FINDING_INDEX[f]]))
    truth, pred = np.array(truth), np.array(pred)
    # Positive-class F1 (CheXbert-F1 convention: 1 is positive, everything else not).
    assert f1_score(truth == 1, pred == 1) == 1.0
    # Uncertain and negative decisions agree too (NaN never equals NaN, so blanks apart).
    for value in (-1.0, 0.0):
        assert np.array_equal(truth == value, pred == value), value
    assert np.array_equal(np.isnan(truth), np.isnan(pred))


# ---------------------------------------------------------------- API shape and values
def test_label_reports_shape_dtype_and_values():
    out = label_reports(["Mild cardiomegaly.", "No pleural effusion.", "Possible pneumonia.", ""])
    assert out.shape == (4, NUM_FINDINGS) and out.dtype == np.float32
    assert set(np.unique(out[~np.isnan(out)])) <= {1.0, 0.0, -1.0}
    assert out[0, FINDING_INDEX["Cardiomegaly"]] == 1.0
    assert out[1, FINDING_INDEX["Pleural Effusion"]] == 0.0
    assert out[2, FINDING_INDEX["Pneumonia"]] == -1.0
    # An empty report mentions nothing: every finding blank, No Finding 1 (CheXpert's rule).
    assert np.isnan(np.delete(out[3], FINDING_INDEX["No Finding"])).all()
    assert out[3, FINDING_INDEX["No Finding"]] == 1.0
    assert label_reports([]).shape == (0, NUM_FINDINGS)


def test_non_string_reports_count_as_empty():
    out = label_reports([None, float("nan")])
    assert (out[:, FINDING_INDEX["No Finding"]] == 1.0).all()


def test_no_finding_is_never_zero():
    rows = label_reports([t for t, _ in FIXTURE_ITEMS])
    column = rows[:, FINDING_INDEX["No Finding"]]
    assert set(np.unique(column[~np.isnan(column)])) == {1.0}
    assert np.isnan(column).any()


def test_mentions_report_spans_and_triggers():
    text = "Heart size is normal. Small left effusion, but no pneumothorax. Possible pneumonia."
    found = mentions(text)
    by_finding = {m.finding: m for m in found}
    for m in found:
        assert text[m.start: m.end] == m.text
    assert by_finding["Cardiomegaly"].label == 0.0 and by_finding["Cardiomegaly"].trigger == "normal"
    assert by_finding["Pleural Effusion"].label == 1.0 and by_finding["Pleural Effusion"].trigger is None
    assert by_finding["Pneumothorax"].label == 0.0 and by_finding["Pneumothorax"].trigger == "no"
    assert by_finding["Pneumonia"].label == -1.0 and by_finding["Pneumonia"].trigger == "possible"
    assert [m.sentence for m in found] == [0, 1, 1, 2]


def test_labeler_instances_agree_with_module_functions():
    texts = [t for t, _ in FIXTURE_ITEMS[:20]]
    np.testing.assert_array_equal(Labeler().label_reports(texts), label_reports(texts))


# ---------------------------------------------------------------- aggregation (CheXpert aggregate.py)
def _m(finding: str, label: float, text: str = "x") -> Mention:
    return Mention(finding, label, 0, len(text), text, "mention", None, 0)


@pytest.mark.parametrize(
    "labels,expected",
    [([0.0], 0.0), ([-1.0], -1.0), ([1.0], 1.0), ([0.0, -1.0], -1.0), ([0.0, 1.0], 1.0), ([-1.0, 1.0], 1.0),
     ([0.0, -1.0, 1.0], 1.0)],
)
def test_aggregate_positive_beats_uncertain_beats_negative(labels, expected):
    out = aggregate([_m("Edema", v) for v in labels])
    assert out[FINDING_INDEX["Edema"]] == expected
    # No Finding: blank as soon as one non-device mention is positive or uncertain.
    assert _same(float(out[FINDING_INDEX["No Finding"]]), 1.0 if expected == 0.0 else NAN)


def test_aggregate_no_finding_rules():
    nf = FINDING_INDEX["No Finding"]
    assert aggregate([])[nf] == 1.0
    assert aggregate([_m("Support Devices", 1.0), _m("Pneumothorax", 0.0)])[nf] == 1.0  # devices do not count
    assert np.isnan(aggregate([_m("Other", 1.0, "emphysema")])[nf])  # no column, still abnormal
    assert aggregate([_m("Other", 0.0, "emphysema")])[nf] == 1.0
    other = aggregate([_m("Other", -1.0, "scoliosis")])
    assert np.isnan(np.delete(other, nf)).all()  # "Other" has no column of its own


def test_aggregate_heart_failure_adds_uncertain_cardiomegaly():
    out = aggregate([_m("Edema", 1.0, "CHF")])
    assert out[FINDING_INDEX["Cardiomegaly"]] == -1.0
    out = aggregate([_m("Edema", 1.0, "CHF"), _m("Cardiomegaly", 1.0, "cardiomegaly")])
    assert out[FINDING_INDEX["Cardiomegaly"]] == 1.0
    out = aggregate([_m("Edema", 0.0, "heart failure")])
    assert np.isnan(out[FINDING_INDEX["Cardiomegaly"]])


# ---------------------------------------------------------------- lists
def test_bad_phrase_file_names_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("finding: Cardiomegally\nmention: [cardiomegaly]\n")
    with pytest.raises(DataError, match="bad.yaml"):
        Labeler(phrases_dir=tmp_path)


def test_custom_lists_change_decisions(tmp_path):
    import shutil

    from kdistill.labeler import lists

    phrases = tmp_path / "phrases"
    shutil.copytree(lists.PHRASES_DIR, phrases)
    # A "normal" list turns "The lungs are clear." from CheXpert's blank into a negative.
    data = yaml.safe_load((phrases / "lung_opacity.yaml").read_text())
    data["normal"] = [r"re:(?:the\s+)?lungs\s+(?:are|appear|remain)\s+(?:\w+\s+){0,3}?clear"]
    (phrases / "lung_opacity.yaml").write_text(yaml.safe_dump(data))
    text = "The lungs are clear."
    assert np.isnan(label_report(text)[FINDING_INDEX["Lung Opacity"]])
    assert Labeler(phrases_dir=phrases).label_report(text)[FINDING_INDEX["Lung Opacity"]] == 0.0


# ---------------------------------------------------------------- command
def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_command_headerless(tmp_path):
    src = tmp_path / "reports.csv"
    reports = ["Mild cardiomegaly. No effusion.", "Possible left lower lobe pneumonia, with a comma.", ""]
    with open(src, "w", newline="") as fh:
        csv.writer(fh).writerows([[r] for r in reports])
    out = tmp_path / "out" / "labels.csv"
    assert label_main([str(src), "--out", str(out)], prog="kdistill label") == 0
    rows = _read_csv(out)
    assert rows[0] == ["Reports", *CHEXPERT_COLUMNS]
    assert [r[0] for r in rows[1:]] == reports
    first = dict(zip(rows[0], rows[1]))
    assert first["Cardiomegaly"] == "1.0" and first["Pleural Effusion"] == "0.0"
    assert first["No Finding"] == "" and first["Edema"] == ""
    second = dict(zip(rows[0], rows[2]))
    assert second["Pneumonia"] == "-1.0"
    assert rows[3][1:] == [""] * 14  # an empty report states nothing: no No Finding = 1.0 (test_labeler_command.py)
    assert [p.name for p in out.parent.iterdir()] == ["labels.csv"]  # no temp file left behind


def test_command_named_column_and_sections(tmp_path):
    src = tmp_path / "reports.csv"
    report = "INDICATION: Evaluate for pneumonia.\n\nFINDINGS: No pneumothorax.\n\nIMPRESSION: Small left effusion."
    with open(src, "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "report"], ["7", report]])
    out = tmp_path / "labels.csv"
    assert label_main([str(src), "--out", str(out), "--column", "report", "--sections", "findings-impression"]) == 0
    header, row = _read_csv(out)
    values = dict(zip(header, row))
    assert header[0] == "report" and values["report"] == report
    assert values["Pneumonia"] == "" and values["Pneumothorax"] == "0.0" and values["Pleural Effusion"] == "1.0"
    label_main([str(src), "--out", str(out), "--column", "report"])
    assert dict(zip(*_read_csv(out)))["Pneumonia"] == "-1.0"  # the indication is labelled when asked to


@pytest.mark.parametrize(
    "content,column,problem",
    [(None, None, "not found"), ("", None, "empty"), ("id,report\n1,No effusion.\n", "text", "no column 'text'"),
     ("1,No effusion.\n", None, "2 columns")],
)
def test_command_bad_input(tmp_path, content, column, problem):
    src = tmp_path / "in.csv"
    if content is not None:
        src.write_text(content)
    with pytest.raises(DataError, match=problem) as info:
        read_reports(src, column)
    assert info.value.path == str(src)
    out = tmp_path / "out.csv"
    with pytest.raises(DataError):
        label_main([str(src), "--out", str(out)] + (["--column", column] if column else []))
    assert not out.exists()


def test_cli_dispatch_reports_bad_input(tmp_path, capsys):
    from kdistill.cli import main as cli_main

    assert cli_main(["label", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o.csv")]) == 1
    assert "missing.csv" in capsys.readouterr().err


# ---------------------------------------------------------------- CheXbert
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_chexbert(tmp_path_factory):
    """A tiny WordPiece tokenizer and a random CheXbert-layout checkpoint whose heads are
    rigged (zero weights, one-hot biases) so every report gets a known class per head."""
    torch = pytest.importorskip("torch")
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertTokenizerFast

    from kdistill.labeler.chexbert import CHEXBERT_CONDITIONS, CheXbertModel

    root = tmp_path_factory.mktemp("chexbert")
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        ["No pleural effusion or pneumothorax.", "Mild cardiomegaly.", "The lungs are clear.", "Possible pneumonia."],
        vocab_size=120, min_frequency=1,
    )
    wordpiece.save_model(str(root))
    BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True).save_pretrained(str(root))
    config = BertConfig(vocab_size=wordpiece.get_vocab_size(), **TINY)
    torch.manual_seed(0)
    model = CheXbertModel(config)
    classes = [(i % 4) for i in range(13)] + [1]  # head i -> class i mod 4; No Finding -> positive
    with torch.no_grad():
        for head, cls in zip(model.linear_heads, classes):
            head.weight.zero_()
            head.bias.zero_()
            head.bias[cls] = 5.0
    state = {"module." + k: v for k, v in model.state_dict().items()}
    state["module.bert.embeddings.position_ids"] = torch.arange(512)[None]  # as older transformers saved it
    torch.save({"model_state_dict": state, "epoch": 1}, root / "chexbert.pth")
    label_of_class = {0: NAN, 1: 1.0, 2: 0.0, 3: -1.0}
    expected = np.full(NUM_FINDINGS, NAN, dtype=np.float32)
    for name, cls in zip(CHEXBERT_CONDITIONS, classes):
        expected[FINDING_INDEX[name]] = label_of_class[cls]
    return root, config, state, expected


def test_chexbert_loads_and_maps_heads_by_name(tiny_chexbert):
    from kdistill.labeler.chexbert import CheXbertLabeler

    root, config, _, expected = tiny_chexbert
    labeler = CheXbertLabeler(root / "chexbert.pth", root, bert_config=config)
    out = labeler.label_reports(["No pleural effusion.", "Mild cardiomegaly. " * 200, ""])
    assert out.shape == (3, NUM_FINDINGS) and out.dtype == np.float32
    assert set(np.unique(out[~np.isnan(out)])) <= {1.0, 0.0, -1.0}
    for row in out:  # rigged heads: the known class per head, in FINDINGS order
        np.testing.assert_array_equal(row, expected)
    # CheXbert's order differs from FINDINGS: Enlarged Cardiomediastinum is its head 0 (blank),
    # Cardiomegaly head 1 (positive), Lung Opacity head 2 (negative), Lung Lesion head 3 (uncertain).
    assert np.isnan(out[0, FINDING_INDEX["Enlarged Cardiomediastinum"]])
    assert out[0, FINDING_INDEX["Cardiomegaly"]] == 1.0
    assert out[0, FINDING_INDEX["Lung Opacity"]] == 0.0 and out[0, FINDING_INDEX["Lung Lesion"]] == -1.0


def test_chexbert_takes_a_bare_vocab_and_rejects_a_missing_tokenizer(tiny_chexbert, tmp_path):
    import shutil

    from kdistill.labeler.chexbert import CheXbertLabeler

    root, config, _, expected = tiny_chexbert
    shutil.copy(root / "vocab.txt", tmp_path / "vocab.txt")
    labeler = CheXbertLabeler(root / "chexbert.pth", tmp_path, bert_config=config)
    np.testing.assert_array_equal(labeler.label_report("Mild cardiomegaly."), expected)
    with pytest.raises(DataError, match="tokenizer directory not found"):
        CheXbertLabeler(root / "chexbert.pth", tmp_path / "none", bert_config=config)


def test_chexbert_rejects_wrong_keys_and_shapes(tiny_chexbert, tmp_path):
    import torch

    from kdistill.labeler.chexbert import CheXbertLabeler

    root, config, state, _ = tiny_chexbert
    renamed = {k.replace("linear_heads", "heads"): v for k, v in state.items()}
    torch.save({"model_state_dict": renamed}, tmp_path / "renamed.pth")
    with pytest.raises(DataError, match=r"renamed\.pth.*missing keys.*linear_heads"):
        CheXbertLabeler(tmp_path / "renamed.pth", root, bert_config=config)
    with pytest.raises(DataError, match="shapes do not match"):
        CheXbertLabeler(root / "chexbert.pth", root, bert_config=dict(TINY, hidden_size=16, vocab_size=config.vocab_size))
    with pytest.raises(DataError, match="not found"):
        CheXbertLabeler(tmp_path / "absent.pth", root, bert_config=config)


def test_get_labeler_names_the_metric(tiny_chexbert):
    fn, name = get_labeler()
    assert name == "chexpert_rules_f1" and fn(["Mild cardiomegaly."])[0, FINDING_INDEX["Cardiomegaly"]] == 1.0
    root, config, _, expected = tiny_chexbert
    fn, name = get_labeler(str(root / "chexbert.pth"), str(root), chexbert_config=config)
    assert name == "chexbert_f1"
    np.testing.assert_array_equal(fn(["Mild cardiomegaly."])[0], expected)
    with pytest.raises(ValueError, match="tokenizer"):
        get_labeler(str(root / "chexbert.pth"))


# ---------------------------------------------------------------- phantom reports vs chexpert.csv
@pytest.fixture(scope="module")
def phantom_reports(tmp_path_factory):
    """~300 phantom studies: FINDINGS + IMPRESSION text and the generator's chexpert.csv labels."""
    import gzip

    from kdistill.data.phantom import PhantomConfig, synthesize
    from kdistill.data.sections import extract_sections
    from kdistill.labels import parse_label

    root = tmp_path_factory.mktemp("phantom")
    synthesize(PhantomConfig(n_studies=300, seed=7, corpus_mb=0, image_size=64, write_rois=False), root)
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    texts, truth = [], []
    for row in rows:
        subject, study = row["subject_id"], row["study_id"]
        report = (root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt").read_text()
        texts.append(" ".join(part for part in extract_sections(report) if part))
        truth.append([parse_label(row[f]) for f in FINDINGS])
    return texts, np.array(truth, dtype=np.float32)


def test_phantom_reports_agree_with_generator_labels(phantom_reports):
    texts, truth = phantom_reports
    assert len(texts) >= 250
    pred = label_reports(texts)
    for j, finding in enumerate(FINDINGS):
        t, p = truth[:, j], pred[:, j]
        if (t == 1).any():
            assert f1_score(t == 1, p == 1) >= 0.98, finding
        for value in (-1.0, 0.0):  # uncertain and negated statements read back as such
            if (t == value).sum() >= 3:
                assert (p[t == value] == value).mean() >= 0.95, (finding, value)
        assert (np.isnan(p[np.isnan(t)])).mean() >= 0.98, finding
