"""``kdistill data check``: each planted fault is found, named by file, and sets the exit status."""
from __future__ import annotations

import gzip
import json

import pytest

from fixtures.kd_data.tree import build_tree
from kdistill.data.check import check_dataset, main

PROG = "kdistill data check"
META = "mimic-cxr-2.0.0-metadata.csv"
LABELS = "mimic-cxr-2.0.0-chexpert.csv"
PA1 = "files/p10/p10000032/s50414267/d-pa-1.jpg"


def run_check(root, tmp_path, *extra):
    out = tmp_path / "check.json"
    status = main([str(root), "--json", str(out), *extra], prog=PROG)
    return status, json.loads(out.read_text())


def only_issues(report):
    """{kind: [(file name, message)]} without the baseline warning of the clean tree."""
    out = {}
    for issue in report["issues"]:
        if issue["kind"] != "unlabelled_study":
            out.setdefault(issue["kind"], []).append((issue["path"].rsplit("/", 1)[-1], issue["message"]))
    return out


def test_clean_tree_passes_with_counts_and_prevalence(tmp_path, capsys):
    root = build_tree(tmp_path / "t")
    status, report = run_check(root, tmp_path)
    assert status == 0 and report["errors"] == 0
    assert report["issue_counts"] == {"unlabelled_study": 1}  # study 59999999 is absent from chexpert.csv
    counts = report["counts"]
    assert counts["studies"] == 4 and counts["images"] == 6 and counts["labelled_studies"] == 3
    assert counts["splits"] == {"train": {"studies": 2, "images": 4}, "validate": {"studies": 1, "images": 1},
                                "test": {"studies": 1, "images": 1}}
    assert counts["views"] == {"PA": 3, "AP": 2, "LATERAL": 1}
    assert counts["label_prevalence"]["Cardiomegaly"] == {"positive": 1, "negative": 1, "uncertain": 0, "blank": 1}
    assert counts["label_prevalence"]["Pneumonia"] == {"positive": 0, "negative": 0, "uncertain": 1, "blank": 2}
    printed = capsys.readouterr().out
    assert "studies: 4" in printed and "0 error(s), 1 warning(s)" in printed


def test_missing_image(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / PA1).unlink()
    status, report = run_check(root, tmp_path)
    assert status == 1 and only_issues(report) == {"missing_image": [("d-pa-1.jpg", f"image listed at {root / META} line 3 not found")]}


def test_corrupt_image(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / PA1).write_bytes(b"garbage, not a JPEG")
    status, report = run_check(root, tmp_path)
    assert status == 1 and list(only_issues(report)) == ["corrupt_image"]
    assert only_issues(report)["corrupt_image"][0][0] == "d-pa-1.jpg"


def test_truncated_image_quick_and_full_decode(tmp_path):
    root = build_tree(tmp_path / "t")
    data = (root / PA1).read_bytes()
    (root / PA1).write_bytes(data[: len(data) - 30])
    for extra in ((), ("--decode",)):
        status, report = run_check(root, tmp_path, *extra)
        assert status == 1 and [k for k in only_issues(report)] == ["corrupt_image"], extra


def test_bad_gzip_csv(tmp_path):
    root = build_tree(tmp_path / "t", gz=True)
    data = (root / f"{META}.gz").read_bytes()
    (root / f"{META}.gz").write_bytes(data[: len(data) // 2])
    status, report = run_check(root, tmp_path)
    issues = only_issues(report)
    assert status == 1 and list(issues) == ["bad_csv"]
    assert issues["bad_csv"][0][0] == f"{META}.gz" and "gzip" in issues["bad_csv"][0][1]


def test_missing_columns(tmp_path):
    root = build_tree(tmp_path / "t")
    text = (root / META).read_text().replace("ViewPosition", "View", 1)
    (root / META).write_text(text)
    status, report = run_check(root, tmp_path)
    issues = only_issues(report)
    assert status == 1 and list(issues) == ["bad_csv"] and "missing column(s) ViewPosition" in issues["bad_csv"][0][1]


def test_wrong_field_count(tmp_path):
    root = build_tree(tmp_path / "t")
    lines = (root / LABELS).read_text().splitlines()
    lines[2] = lines[2] + ",1.0"
    (root / LABELS).write_text("\n".join(lines) + "\n")
    status, report = run_check(root, tmp_path)
    issues = only_issues(report)
    assert status == 1 and issues["malformed_row"] == [(LABELS, "line 3: expected 16 fields, got 17")]


def test_label_outside_allowed_values(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / LABELS).write_text((root / LABELS).read_text().replace("-1.0", "0.5"))
    status, report = run_check(root, tmp_path)
    assert status == 1
    assert only_issues(report)["bad_label"] == [(LABELS, "line 4: Pneumonia = '0.5' is not 1, 0, -1 or blank")]


def test_duplicate_dicom_id(tmp_path):
    root = build_tree(tmp_path / "t")
    lines = (root / META).read_text().splitlines()
    (root / META).write_text("\n".join(lines + [lines[2]]) + "\n")
    status, report = run_check(root, tmp_path)
    assert status == 1
    assert only_issues(report) == {"duplicate_dicom": [(META, "line 8: dicom_id d-pa-1 appears more than once")]}


def test_duplicate_study_row(tmp_path):
    root = build_tree(tmp_path / "t")
    lines = (root / LABELS).read_text().splitlines()
    (root / LABELS).write_text("\n".join(lines + [lines[1]]) + "\n")
    status, report = run_check(root, tmp_path)
    assert status == 1
    assert only_issues(report) == {"duplicate_study": [(LABELS, "line 5: study 50414267 appears more than once")]}


def test_report_without_usable_section_is_a_warning(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / "files/p10/p10000032/s53189527.txt").write_text(" FINAL REPORT\n INDICATION:  Cough.\n COMPARISON:  None.\n")
    status, report = run_check(root, tmp_path)
    assert status == 0 and report["errors"] == 0
    assert only_issues(report) == {"no_usable_section": [("s53189527.txt", "no FINDINGS or IMPRESSION text (even by fallback)")]}


def append_roi(root, **roi):
    with open(root / "rois.jsonl", "a") as fh:
        fh.write(json.dumps(roi) + "\n")


def test_roi_outside_image(tmp_path):
    root = build_tree(tmp_path / "t")
    append_roi(root, study_id="50414267", dicom_id="d-pa-1", finding="Edema", box=[10, 10, 33, 20], mask=None)
    status, report = run_check(root, tmp_path)
    assert status == 1
    message = "line 4: box [10.0, 10.0, 33.0, 20.0] (Edema) exceeds image d-pa-1 of 32x40 (Columns x Rows)"
    assert only_issues(report) == {"roi_outside_image": [("rois.jsonl", message)]}


def test_roi_for_unknown_study(tmp_path):
    root = build_tree(tmp_path / "t")
    append_roi(root, study_id="51111111", dicom_id="x", finding="Edema", box=[1, 1, 2, 2], mask=None)
    status, report = run_check(root, tmp_path)
    assert status == 1
    assert only_issues(report) == {"roi_unknown_study": [("rois.jsonl", "line 4: study 51111111 is not in the metadata")]}


def test_roi_for_unknown_finding(tmp_path):
    root = build_tree(tmp_path / "t")
    append_roi(root, study_id="50414267", dicom_id="d-pa-1", finding="Emphysema", box=[1, 1, 2, 2], mask=None)
    status, report = run_check(root, tmp_path)
    assert status == 1
    assert only_issues(report) == {"bad_roi": [("rois.jsonl", "line 4: unknown finding 'Emphysema'")]}


def test_missing_report_and_missing_csv(tmp_path):
    root = build_tree(tmp_path / "t")
    (root / "files/p10/p10000764/s57375967.txt").unlink()
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    report = check_dataset(root)
    kinds = report.kinds()
    assert kinds["missing_report"] == 1 and kinds["missing_file"] == 1
    assert any(i.path.endswith("mimic-cxr-2.0.0-split.csv.gz") for i in report.errors)


def test_gzip_of_wrong_field_count_found_inside(tmp_path):
    root = build_tree(tmp_path / "t", gz=True)
    with gzip.open(root / f"{LABELS}.gz", "rt") as fh:
        lines = fh.read().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:5])
    with gzip.open(root / f"{LABELS}.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    status, report = run_check(root, tmp_path)
    assert status == 1 and only_issues(report)["malformed_row"] == [(f"{LABELS}.gz", "line 2: expected 16 fields, got 5")]


def test_root_that_is_not_a_folder(tmp_path):
    from kdistill.errors import DataError

    with pytest.raises(DataError, match="not a folder"):
        main([str(tmp_path / "nope")], prog=PROG)


def test_cli_dispatch_exit_status(tmp_path, capsys):
    from kdistill.cli import main as cli

    root = build_tree(tmp_path / "t")
    assert cli(["data", "check", str(root)]) == 0
    (root / PA1).unlink()
    assert cli(["data", "check", str(root)]) == 1
    assert "missing_image: 1" in capsys.readouterr().out


def test_image_size_disagreeing_with_metadata_is_a_warning(tmp_path):
    root = build_tree(tmp_path / "t")
    lines = (root / META).read_text().splitlines()
    lines[2] = lines[2].replace(",40,32,", ",400,320,")  # d-pa-1 is really 32x40
    (root / META).write_text("\n".join(lines) + "\n")
    status, report = run_check(root, tmp_path)
    assert status == 0
    assert only_issues(report) == {"size_mismatch": [("d-pa-1.jpg", "image is 32x40, metadata says Columns=320 Rows=400")]}
