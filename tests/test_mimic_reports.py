"""MIMIC-CXR as distributed: the JPG project's images and CSVs in one tree, the report texts
(mimic-cxr-reports) in another, and NegBio's label file as a second label source."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from fixtures.kd_data.tree import build_tree
from kdistill.data.mimic import load_studies
from kdistill.data.sources import open_source
from kdistill.data.stage import DataConfig
from kdistill.errors import DataError, SkipCounter
from kdistill.labels import FINDINGS


def split_reports(root: Path, reports: Path) -> list[Path]:
    """Move every sSTUDY.txt into reports/files/... as the two PhysioNet projects lay them out."""
    moved = []
    for txt in sorted((root / "files").rglob("s*.txt")):
        dest = reports / txt.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(txt), dest)
        moved.append(dest)
    return moved


@pytest.fixture()
def split_tree(tmp_path):
    root = build_tree(tmp_path / "jpg")
    baseline = {s.study_id: (s.findings, s.impression) for s in load_studies(root)}
    moved = split_reports(root, tmp_path / "reports")
    assert moved and not list((root / "files").rglob("*.txt"))
    return root, tmp_path / "reports", baseline


def test_reports_from_a_separate_tree_equal_reports_beside_the_images(split_tree):
    root, reports, baseline = split_tree
    for given in (reports, reports / "files"):  # the folder holding files/, or files/ itself
        studies = load_studies(root, reports_root=given)
        assert {s.study_id: (s.findings, s.impression) for s in studies} == baseline
    data = open_source("mimic", root, reports_root=str(reports))
    assert [s.study_id for s in data.load_studies()] == list(baseline)


def test_without_reports_root_the_error_says_what_to_download(split_tree):
    root, _, _ = split_tree
    with pytest.raises(DataError, match=r"report of study \d+ not found \(MIMIC-CXR-JPG ships no reports: "
                                        r"point data.reports_root"):
        load_studies(root)


def test_missing_reports_are_counted_and_the_count_logged(split_tree, caplog):
    root, reports, baseline = split_tree
    first = sorted((reports / "files").rglob("*.txt"))[0]
    first.unlink()
    counter = SkipCounter("skip")
    with caplog.at_level("WARNING"):
        studies = load_studies(root, reports_root=reports, on_error="skip", counter=counter)
    assert counter.summary() == {"missing_report": 1} and len(studies) == len(baseline) - 1
    assert f"1 of {len(baseline)} studies have no report in {reports / 'files'}" in caplog.text
    with pytest.raises(DataError, match="reports_root does not exist"):
        load_studies(root, reports_root=reports / "nope")
    (reports / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files/ folder"):
        load_studies(root, reports_root=reports / "empty")


def test_negbio_labels_are_a_second_label_source(tmp_path):
    root = build_tree(tmp_path / "t")
    chexpert = (root / "mimic-cxr-2.0.0-chexpert.csv").read_text().splitlines()
    header = chexpert[0].split(",")
    col = header.index("Pneumonia")
    rows = [line.split(",") for line in chexpert[1:]]
    for row in rows:  # NegBio read every study's pneumonia as negative
        row[col] = "0.0"
    (root / "mimic-cxr-2.0.0-negbio.csv").write_text("\n".join([chexpert[0]] + [",".join(r) for r in rows]) + "\n")
    by_chexpert = {s.study_id: s.labels for s in load_studies(root)}
    by_negbio = {s.study_id: s.labels for s in load_studies(root, labels="negbio")}
    j = FINDINGS.index("Pneumonia")
    assert by_chexpert["57375967"][j] == -1.0 and by_negbio["57375967"][j] == 0.0
    for sid in by_chexpert:  # every other finding is the same
        assert all((math.isnan(a) and math.isnan(b)) or a == b
                   for i, (a, b) in enumerate(zip(by_chexpert[sid], by_negbio[sid])) if i != j)
    with pytest.raises(ValueError, match="labels must be one of chexpert, negbio"):
        load_studies(root, labels="chexbert")
    (root / "mimic-cxr-2.0.0-negbio.csv").unlink()
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-negbio.csv.gz: file not found"):
        load_studies(root, labels="negbio")


def test_the_data_config_carries_the_options_to_every_stage():
    cfg = DataConfig(source="mimic", root="/x", reports_root="/r", labels="negbio")
    cfg.validate()
    assert cfg.source_options() == {"reports_root": "/r", "labels": "negbio"}
    assert DataConfig(source="mimic", root="/x").source_options() == {}
    with pytest.raises(ValueError, match="options of the mimic source, not 'chexpert'"):
        DataConfig(source="chexpert", root="/x", reports_root="/r").validate()
    with pytest.raises(ValueError, match="chexpert or negbio"):
        DataConfig(source="mimic", root="/x", labels="chexbert").validate()


def test_prepare_reads_the_separate_reports_from_the_command_line(split_tree, tmp_path):
    from kdistill import cli
    from kdistill.data.prepare import load_prepared, read_batch

    root, reports, baseline = split_tree
    out = tmp_path / "prepared"
    assert cli.main(["data", "prepare", str(root), "--reports-root", str(reports), "--size", "32", "--out", str(out)]) == 0
    prepared = load_prepared(out)
    got = {}
    for split in prepared:
        batch = read_batch(prepared[split], slice(0, len(prepared[split])), ["study_id", "findings", "impression"])
        got.update({sid: (f, i) for sid, f, i in zip(batch["study_id"], batch["findings"], batch["impression"])})
    assert got == baseline
