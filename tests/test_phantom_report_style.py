"""The report_style regime: reports that name a cause in place of the findings it brings, a
label file that follows the project's labeler, the truth kept in ground_truth.csv.gz, and a
corpus that says which findings each cause brings."""
from __future__ import annotations

import csv
import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from kdistill.labels import FINDINGS
from kdistill.data.phantom import FindingSpec, PhantomConfig, synthesize
from kdistill.data.phantom.config import ReportStyle
from kdistill.data.phantom.knowledge import load_knowledge
from kdistill.data.phantom.spec import StudyPlan
from kdistill.data.phantom.style import study_report

SHARE = 0.4
# Hand-written, independent of the phrase banks: words by which a report names a finding.
NAMES = {
    "Cardiomegaly": r"cardiomegaly|heart is|heart size|cardiac silhouette",
    "Edema": r"edema",
    "Pleural Effusion": r"effusion",
    "Consolidation": r"consolidation",
    "Lung Opacity": r"opacit",
}


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with gzip.open(path, "rt", newline="") as fh:
        return {r["study_id"]: r for r in csv.DictReader(fh)}


def _has(row: dict[str, str], syndrome) -> bool:
    """The study has the syndrome, read from its true labels (1.0 = stated present)."""
    positive = {f for f in FINDINGS if row[f] == "1.0"}
    return set(syndrome.requires) <= positive and len(set(syndrome.brings) & positive) >= syndrome.needs


@pytest.fixture(scope="module")
def styled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("styled")
    synthesize(PhantomConfig(n_studies=900, seed=5, image_size=64, corpus_mb=0.3,
                             report_style=ReportStyle(implied_share=SHARE)), root)
    return root


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plain")
    synthesize(PhantomConfig(n_studies=900, seed=5, image_size=64, corpus_mb=0.3), root)
    return root


def _report(root: Path, row: dict[str, str]) -> str:
    return (root / f"files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}.txt").read_text()


def test_labels_differ_from_truth_on_the_implied_share_of_studies_with_a_cause(styled):
    know = load_knowledge()
    chexpert, truth = _csv(styled / "mimic-cxr-2.0.0-chexpert.csv.gz"), _csv(styled / "ground_truth.csv.gz")
    assert list(chexpert) == list(truth)
    with_cause = [s for s, row in truth.items() if any(_has(row, syn) for syn in know.syndromes.values())]
    differs = {s for s in truth if chexpert[s] != truth[s]}
    assert differs <= set(with_cause)  # a study without a cause keeps its labels
    share = len(differs) / len(with_cause)
    assert len(with_cause) > 100
    assert abs(share - SHARE) < 4 * math.sqrt(SHARE * (1 - SHARE) / len(with_cause)), (share, len(with_cause))
    implied = [json.loads(line) for line in (styled / "report_style.jsonl").read_text().splitlines()]
    assert {r["study_id"] for r in implied} == differs
    assert {r["syndrome"] for r in implied} == set(know.syndromes)
    assert {r["stated_in"] for r in implied} == {"findings+impression", "impression"}


def test_an_implied_report_names_the_cause_and_its_left_out_findings_are_blank(styled):
    know = load_knowledge()
    chexpert, truth = _csv(styled / "mimic-cxr-2.0.0-chexpert.csv.gz"), _csv(styled / "ground_truth.csv.gz")
    blank = 0
    for r in map(json.loads, (styled / "report_style.jsonl").read_text().splitlines()):
        sid = r["study_id"]
        text = _report(styled, truth[sid]).lower()
        syndrome = know.syndromes[r["syndrome"]]
        cause_words = {"congestive heart failure": r"heart failure|cardiac decompensation",
                       "acute respiratory distress syndrome": r"respiratory distress syndrome|ards",
                       "lobar pneumonia": r"pneumonia"}[r["syndrome"]]
        findings_part, impression_part = text.split("impression:")
        assert re.search(cause_words, impression_part), text
        if r["stated_in"] == "impression" and syndrome.findings_phrases:
            assert not re.search(cause_words, findings_part), text
        assert r["omitted"] and set(r["omitted"]) <= set(syndrome.brings)
        for f in r["omitted"]:
            assert truth[sid][f] == "1.0"
            assert not re.search(NAMES[f], text), (f, text)  # left out: not named anywhere
            blank += chexpert[sid][f] in ("", "0.0")
        assert any(chexpert[sid][f] != "1.0" for f in r["omitted"])
    assert blank > 30


def test_the_label_file_is_what_the_labeler_reads(styled):
    from kdistill.data.sections import extract_sections
    from kdistill.labeler import label_reports

    rows = list(_csv(styled / "mimic-cxr-2.0.0-chexpert.csv.gz").values())[::7]
    texts = [" ".join(extract_sections(_report(styled, row))) for row in rows]
    got = label_reports(texts)
    for row, labels in zip(rows, got):
        assert [row[f] for f in FINDINGS] == ["" if math.isnan(v) else f"{v:.1f}" for v in labels], row["study_id"]


def test_report_style_moves_no_pixel_region_or_other_report(styled, plain):
    for pattern in ("files/*/*/*/*.jpg", "rois/*.png", "rois.jsonl", "mimic-cxr-2.0.0-metadata.csv.gz",
                    "mimic-cxr-2.0.0-split.csv.gz"):
        paths = sorted(plain.glob(pattern))
        assert paths
        for p in paths:
            assert p.read_bytes() == (styled / p.relative_to(plain)).read_bytes(), p
    implied = {json.loads(line)["study_id"] for line in (styled / "report_style.jsonl").read_text().splitlines()}
    reports = sorted(plain.glob("files/*/*/*.txt"))
    for p in reports:
        same = p.read_bytes() == (styled / p.relative_to(plain)).read_bytes()
        assert same == (p.stem[1:] not in implied), p
    # The truth of the styled phantom is the plain phantom's label file (no label noise here).
    assert (styled / "ground_truth.csv.gz").read_bytes() == (plain / "ground_truth.csv.gz").read_bytes()
    assert (plain / "ground_truth.csv.gz").read_bytes() == (plain / "mimic-cxr-2.0.0-chexpert.csv.gz").read_bytes()
    assert (styled / "ground_truth.csv.gz").read_bytes() != (styled / "mimic-cxr-2.0.0-chexpert.csv.gz").read_bytes()
    assert not (plain / "report_style.jsonl").exists()


def test_the_corpus_says_which_findings_each_cause_brings(styled, plain):
    know = load_knowledge()
    docs = [json.loads(line) for line in (styled / "corpus" / "corpus.jsonl").read_text().splitlines()]
    causes = [d for d in docs if d.get("cause")]
    assert {d["cause"] for d in causes} == set(know.syndromes)
    for d in causes:
        syndrome = know.syndromes[d["cause"]]
        text = d["text"].lower()
        assert d["kind"] == "textbook" and set(d["findings"]) == set(syndrome.brings) | set(syndrome.requires)
        assert syndrome.name in text and re.search(r"implie|consistent with|in place of", text), text
        for f in syndrome.brings:
            assert re.search(NAMES[f], text), (f, text)
    plain_docs = [json.loads(line) for line in (plain / "corpus" / "corpus.jsonl").read_text().splitlines()]
    assert not any(d.get("cause") for d in plain_docs)
    # The other docs are the plain corpus's, in order, with the cause docs in between.
    others = [d for d in docs if not d.get("cause")]
    assert others == plain_docs[: len(others)]


def _chf_plan(seed: int) -> StudyPlan:
    findings = {"Cardiomegaly": FindingSpec(severity="moderate"), "Edema": FindingSpec("bilateral", "moderate"),
                "Pleural Effusion": FindingSpec("bilateral", "small")}
    return StudyPlan(index=0, subject_id="10000001", study_id="50000001", dicom_id="d", split="train", view="AP",
                     study_date=21100101, study_time="1200", sex="man", patient_seed=1, seed=seed, findings=findings)


def test_congestive_heart_failure_in_place_of_an_effusion():
    # A known case: cardiomegaly, edema and effusions; the report names CHF and leaves the effusion out.
    know = load_knowledge()
    cfg = PhantomConfig(report_style=ReportStyle(implied_share=1.0, impression_only_share=0.0))
    effusion = FINDINGS.index("Pleural Effusion")
    cases = 0
    for seed in range(40):
        written = study_report(_chf_plan(seed), cfg, know)
        assert written.implied is not None and written.implied.syndrome == "congestive heart failure"
        text = (written.report.findings + " " + written.report.impression).lower()
        assert re.search(r"heart failure|cardiac decompensation", text)
        assert written.truth[effusion] == 1.0
        if "Pleural Effusion" in written.implied.omitted:
            assert "effusion" not in text
            assert math.isnan(written.labels[effusion])
            cases += 1
        else:
            assert written.labels[effusion] == 1.0
    assert cases >= 10
    off = study_report(_chf_plan(0), PhantomConfig(), know)
    assert off.implied is None and np.array_equal(off.labels, off.truth, equal_nan=True)


def test_label_noise_is_kept_out_of_the_truth(tmp_path):
    synthesize(PhantomConfig(n_studies=200, seed=2, image_size=64, corpus_mb=0, label_noise=0.3), tmp_path)
    chexpert, truth = _csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"), _csv(tmp_path / "ground_truth.csv.gz")
    rois = {}
    for line in (tmp_path / "rois.jsonl").read_text().splitlines():
        r = json.loads(line)
        rois.setdefault(r["study_id"], set()).add(r["finding"])
    restored = 0
    for sid, row in truth.items():
        for f in FINDINGS:
            if row[f] != chexpert[sid][f] and f != "No Finding":
                assert chexpert[sid][f] == "" and row[f] in ("1.0", "-1.0")  # visible, left unstated
                restored += 1
            if f != "No Finding":  # the truth names exactly the findings drawn in the image
                assert (row[f] in ("1.0", "-1.0")) == (f in rois.get(sid, set())), (sid, f)
    assert restored > 50
