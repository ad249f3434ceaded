"""Prompt template, corpus reading, LM example encoding and the consistency rule (no models)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kdistill.data.study import Study
from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX, FINDINGS
from teacher import corpus as corpuslib
from kdistill.labeler.consistency import is_consistent
from teacher.lm_data import IGNORE, encode
from teacher.prompts import (RATIONALE_MARKER, FindingMention, attributes_from_report, build_prompt,
                             doc_mentions, format_prompt, prompt_for_study)


def _labels(**values):
    labels = [math.nan] * len(FINDINGS)
    for name, v in values.items():
        labels[FINDING_INDEX[name.replace("_", " ")]] = v
    return labels


def _study(labels, findings="", impression=""):
    return Study(study_id="50000001", subject_id="10000001", split="train", image_paths=[], view="PA",
                 findings=findings, impression=impression, labels=labels)


def test_prompt_lists_positive_and_uncertain_findings_with_report_attributes():
    study = _study(_labels(Pleural_Effusion=1.0, Edema=-1.0, Cardiomegaly=0.0, No_Finding=math.nan),
                   findings="Small left pleural effusion. Possible mild pulmonary edema. Heart size is normal.",
                   impression="Left effusion.")
    prompt = prompt_for_study(study)
    assert not prompt.truncated
    # FINDINGS order (Edema before Pleural Effusion); negatives and blanks are left out
    assert prompt.text.splitlines()[1] == "Findings: Edema (small, uncertain); Pleural Effusion (left, small)"
    assert prompt.text.startswith("Report: FINDINGS: Small left pleural effusion.")
    assert prompt.text.endswith(RATIONALE_MARKER)
    assert "Cardiomegaly" not in prompt.text.splitlines()[1]


def test_study_without_findings_says_none_and_no_finding_is_ignored():
    prompt = prompt_for_study(_study(_labels(No_Finding=1.0), findings="The lungs are clear."))
    assert prompt.text.splitlines()[1] == "Findings: none"


def test_empty_report_still_makes_a_prompt():
    prompt = prompt_for_study(_study(_labels(Pneumothorax=1.0)))
    assert prompt.text == "Report: none.\nFindings: Pneumothorax\nRationale:"


def test_attribute_words_come_from_the_sentence_naming_the_finding():
    report = "There is a large right pneumothorax. Bibasilar atelectasis. Small left effusion."
    assert attributes_from_report("Pneumothorax", report) == ("right", "large")
    assert attributes_from_report("Atelectasis", report) == ("bilateral", None)
    assert attributes_from_report("Pleural Effusion", report) == ("left", "small")
    assert attributes_from_report("Edema", "Marked pulmonary edema.") == (None, "large")
    assert attributes_from_report("Fracture", "Minimally displaced left rib fracture.") == ("left", "moderate")
    assert attributes_from_report("Edema", report) == (None, None)


def test_corpus_doc_and_study_with_same_findings_get_the_same_findings_line():
    doc = {"kind": "rationale", "text": "x", "findings": ["Pleural Effusion", "Cardiomegaly"],
           "attributes": {"Pleural Effusion": {"laterality": "left", "severity": "small"}}}
    study = _study(_labels(Pleural_Effusion=1.0, Cardiomegaly=1.0),
                   findings="Small left pleural effusion. Cardiomegaly.")
    assert (format_prompt(doc_mentions(doc), "R").splitlines()[1]
            == prompt_for_study(study).text.splitlines()[1]
            == "Findings: Cardiomegaly; Pleural Effusion (left, small)")


def test_long_report_is_cut_from_the_report_side_and_fits():
    words = lambda text: len(text.split())  # noqa: E731 - a word counter stands in for a tokenizer
    mentions = [FindingMention("Pleural Effusion", laterality="left")]
    report = " ".join(f"word{i}" for i in range(200))
    built = build_prompt(mentions, report, count_tokens=words, max_tokens=40)
    assert built.truncated
    assert words(built.text) == 40  # the longest prefix that fits: 40 = 40 exactly
    assert "word0 word1" in built.text and "word199" not in built.text and "..." in built.text
    assert built.text.splitlines()[1] == "Findings: Pleural Effusion (left)"
    short = build_prompt(mentions, "short report", count_tokens=words, max_tokens=40)
    assert not short.truncated and "short report" in short.text


def test_read_corpus_rejects_missing_empty_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        corpuslib.read_corpus(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(err.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty") as err:
        corpuslib.read_corpus(empty)
    assert str(empty) in str(err.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"kind": "textbook", "text": "ok"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        corpuslib.read_corpus(bad)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"kind": "rationale", "text": "t", "findings": ["Flu"]}) + "\n")
    with pytest.raises(DataError, match="unknown finding"):
        corpuslib.read_corpus(unknown)


def test_pairs_put_the_rationale_after_the_marker_with_its_leading_space():
    docs = [{"kind": "rationale", "text": "Signs indicate effusion.", "findings": ["Pleural Effusion"],
             "attributes": {}},
            {"kind": "textbook", "text": "Fluid collects at the base.", "findings": [], "attributes": {}}]
    pairs = corpuslib.pair_examples(docs, seed=0, copies=8)
    assert len(pairs) == 8  # textbook docs make no pairs
    reports = set()
    for pair in pairs:
        assert pair.prompt.endswith("Findings: Pleural Effusion\nRationale:")
        assert pair.target == " Signs indicate effusion."
        reports.add(pair.prompt.splitlines()[0])
    # the pair's report is empty or states the doc's own finding (+ negated others), never another doc's
    assert "Report: none." in reports and len(reports) > 2
    for report in reports - {"Report: none."}:
        sentences = report.removeprefix("Report: FINDINGS: ").split(". ")
        positive = [x for x in sentences if not x.startswith("No ")]
        assert [x.rstrip(".") for x in positive] == ["Pleural effusion"]
        assert 1 <= len(sentences) - len(positive) <= 3 and "No pleural effusion" not in report


def test_pseudo_report_states_findings_with_attributes():
    doc = {"findings": ["Cardiomegaly", "Pleural Effusion"],
           "attributes": {"Pleural Effusion": {"laterality": "left", "severity": "small"},
                          "Cardiomegaly": {"laterality": None, "severity": "large"}}}
    assert corpuslib.pseudo_report(doc) == "FINDINGS: Large cardiomegaly. Small left pleural effusion."
    assert corpuslib.pseudo_report({"findings": []}) == "FINDINGS: The lungs are clear."


def test_holdout_split_is_disjoint_and_never_empty():
    docs = [{"text": str(i)} for i in range(10)]
    train, held = corpuslib.split_holdout(docs, 0.05, seed=0)
    assert len(held) == 1 and len(train) == 9
    assert {d["text"] for d in train} | {d["text"] for d in held} == {str(i) for i in range(10)}


class _CharTok:
    """Character-level stand-in tokenizer: ids are code points; bos=1, eos=2."""
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def test_encode_masks_the_prompt_and_keeps_the_target_when_cut():
    ex = corpuslib.Example(prompt="abcdef", target=" xy")
    ids, labels = encode([ex], _CharTok(), max_length=100)[0]
    assert ids == [1] + [ord(c) for c in "abcdef xy"] + [2]
    assert labels == [IGNORE] * 7 + [ord(" "), ord("x"), ord("y"), 2]
    ids, labels = encode([ex], _CharTok(), max_length=6)[0]  # cut 5 tokens from the prompt's start
    assert ids == [ord("e"), ord("f"), ord(" "), ord("x"), ord("y"), 2]
    assert labels == [IGNORE, IGNORE, ord(" "), ord("x"), ord("y"), 2]


@pytest.mark.parametrize("rationale, study, expected", [
    # mentions the positive finding (as positive or uncertain) and nothing absent
    (dict(Pleural_Effusion=1.0), dict(Pleural_Effusion=1.0), True),
    (dict(Pleural_Effusion=-1.0), dict(Pleural_Effusion=1.0), True),
    # misses a positive finding
    (dict(), dict(Pleural_Effusion=1.0), False),
    (dict(Pleural_Effusion=0.0), dict(Pleural_Effusion=1.0), False),
    # names a finding the study has as absent (0) or blank
    (dict(Pleural_Effusion=1.0, Edema=1.0), dict(Pleural_Effusion=1.0, Edema=0.0), False),
    (dict(Pleural_Effusion=1.0, Edema=-1.0), dict(Pleural_Effusion=1.0), False),
    # the study's uncertain findings may go either way; negated mentions are fine; No Finding ignored
    (dict(Pleural_Effusion=1.0), dict(Pleural_Effusion=1.0, Edema=-1.0), True),
    (dict(Pleural_Effusion=1.0, Edema=1.0), dict(Pleural_Effusion=1.0, Edema=-1.0), True),
    (dict(Edema=0.0, No_Finding=1.0), dict(No_Finding=1.0), True),
    (dict(), dict(No_Finding=1.0), True),
])
def test_consistency_rule(rationale, study, expected):
    r = np.asarray(_labels(**rationale), dtype=np.float32)  # numpy float32, as the labeler returns
    assert is_consistent(r, _labels(**study)) is expected


def test_pairs_use_real_reports_with_the_same_finding_set():
    effusion = _study(_labels(Pleural_Effusion=1.0, Edema=0.0), findings="Small left pleural effusion. No edema.")
    hedged = _study(_labels(Pleural_Effusion=1.0, Edema=-1.0), findings="Effusion. Possible edema.")
    normal = _study(_labels(No_Finding=1.0), findings="The lungs are clear.")
    bank = corpuslib.report_bank([effusion, hedged, normal])
    # keyed by (finding, uncertain) over positive and uncertain findings ("No Finding" aside)
    assert bank == {frozenset({("Pleural Effusion", False)}): [effusion.report],
                    frozenset({("Pleural Effusion", False), ("Edema", True)}): [hedged.report],
                    frozenset(): [normal.report]}
    docs = [{"kind": "rationale", "text": "Meniscus: effusion.", "findings": ["Pleural Effusion"], "attributes": {}},
            {"kind": "rationale", "text": "Wide heart.", "findings": ["Cardiomegaly"], "attributes": {}},
            {"kind": "rationale", "text": "Meniscus; maybe edema.", "findings": ["Edema", "Pleural Effusion"],
             "attributes": {"Edema": {"uncertain": True}}}]
    pairs = corpuslib.pair_examples(docs, seed=0, copies=20, reports=bank)
    effusion_reports = {p.prompt.splitlines()[0] for p in pairs if p.target == " Meniscus: effusion."}
    assert f"Report: {' '.join(effusion.report.split())}" in effusion_reports
    assert f"Report: {' '.join(hedged.report.split())}" not in effusion_reports  # hedged reports: hedged docs only
    hedged_reports = {p.prompt.splitlines()[0] for p in pairs if p.target == " Meniscus; maybe edema."}
    assert f"Report: {' '.join(hedged.report.split())}" in hedged_reports
    assert any("Edema (uncertain)" in p.prompt for p in pairs if p.target == " Meniscus; maybe edema.")
    cardio_reports = {p.prompt.splitlines()[0] for p in pairs if p.target == " Wide heart."}
    assert not any("pleural effusion." in r.lower() and "no pleural" not in r.lower() for r in cardio_reports)


def test_the_three_prompt_modes():
    from teacher.prompts import PROMPT_MODES

    study = _study(_labels(Pleural_Effusion=1.0), findings="Small left pleural effusion.")
    texts = {mode: prompt_for_study(study, mode=mode).text for mode in PROMPT_MODES}
    assert texts["labels+report"] == ("Report: FINDINGS: Small left pleural effusion.\n"
                                      "Findings: Pleural Effusion (left, small)\nRationale:")
    assert texts["report"] == "Report: FINDINGS: Small left pleural effusion.\nRationale:"
    assert texts["labels"] == "Findings: Pleural Effusion (left, small)\nRationale:"
    assert prompt_for_study(study).text == texts["labels+report"]  # the default, as before modes
    assert prompt_for_study(study, mode="report").n_findings == 1
    with pytest.raises(ValueError, match="prompt_mode must be one of"):
        format_prompt([], "x", mode="image")


def test_report_mode_pairs_always_carry_a_report_and_other_modes_keep_their_draws():
    docs = [{"kind": "rationale", "text": f"Effusion {i}.", "findings": ["Pleural Effusion"],
             "attributes": {"Pleural Effusion": {"laterality": "left"}}} for i in range(60)]
    report = corpuslib.pair_examples(docs, seed=0, mode="report")
    assert all(p.prompt.startswith("Report: FINDINGS:") and "Findings:" not in p.prompt for p in report)
    both = corpuslib.pair_examples(docs, seed=0)
    assert any(p.prompt.startswith("Report: none.") for p in both)  # empty reports in the other modes
    assert [p.target for p in both] == [p.target for p in report]
    labels = corpuslib.pair_examples(docs, seed=0, mode="labels")
    assert {p.prompt for p in labels} == {"Findings: Pleural Effusion (left)\nRationale:"}
