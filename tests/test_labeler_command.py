"""``kdistill label`` on broken input: each fault is planted in a file and must give a clear
DataError naming the file (and the line where one can be named), never a silent wrong output."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest

from kdistill.errors import DataError
from kdistill.labeler.command import CHEXPERT_COLUMNS, is_empty_report, main as label_main, read_labels, read_reports
from fixtures.labeler_realdata import iu_dev_csv  # noqa: F401  (a pytest fixture)

REPORTS = ["Mild cardiomegaly. No effusion.", "Possible left lower lobe pneumonia, with a comma.", "No pneumothorax."]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _write_csv(path: Path, rows, encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        csv.writer(fh).writerows(rows)
    return path


def _refused(src: Path, out: Path, problem: str, *extra: str) -> DataError:
    """The command refuses ``src`` with a DataError naming the file and ``problem``; no output."""
    with pytest.raises(DataError, match=problem) as info:
        label_main([str(src), "--out", str(out), *extra])
    assert str(src) in str(info.value)
    assert not out.exists()
    return info.value


# ---------------------------------------------------------------- quoting: rows in == rows out
def test_unterminated_quote_names_its_line(tmp_path):
    # Row 2 opens a quote that never closes: read leniently, rows 2-4 would become one report.
    src = tmp_path / "in.csv"
    src.write_text('"Mild cardiomegaly."\n"Possible pneumonia, left base.\nNo effusion.\nNo pneumothorax.\n')
    error = _refused(src, tmp_path / "out.csv", "line 2: a quote opened in this row is never closed")
    assert error.path == str(src)


def test_quote_closed_mid_field_names_its_line(tmp_path):
    # The quote of row 2 is closed by the quote that opens row 3: a lenient reader merges them.
    src = tmp_path / "in.csv"
    src.write_text('id,report\n1,"Mild cardiomegaly."\n2,"Possible pneumonia.\n3,"No effusion."\n4,No pneumothorax.\n')
    _refused(src, tmp_path / "out.csv", "line 3: a quote closes in the middle of a field", "--column", "report")


def test_quoted_reports_over_several_lines_keep_one_row_each(tmp_path):
    # Real reports hold blank lines inside their quotes; each is still one row out.
    reports = ["FINDINGS: Heart size is normal.\n\nIMPRESSION: No acute disease.",
               'FINDINGS: A "ground glass" opacity, right base.\n\nIMPRESSION: Possible pneumonia.',
               "IMPRESSION: Small left effusion."]
    src = _write_csv(tmp_path / "in.csv", [["id", "report"], *[[str(i), r] for i, r in enumerate(reports)]])
    out = tmp_path / "out.csv"
    assert label_main([str(src), "--out", str(out), "--column", "report"]) == 0
    rows = _rows(out)
    assert len(rows) == 1 + len(reports)
    assert [r[0] for r in rows[1:]] == reports
    assert dict(zip(rows[0], rows[2]))["Pneumonia"] == "-1.0"


def test_real_iu_reports_rows_in_equal_rows_out(tmp_path, iu_dev_csv):
    out = tmp_path / "labels.csv"
    assert label_main([str(iu_dev_csv), "--out", str(out), "--column", "Reports"]) == 0
    texts, gold = read_labels(iu_dev_csv)
    labelled, labels = read_labels(out)
    assert len(texts) == len(labelled) == 1537 and labelled == texts
    assert labels.shape == gold.shape == (1537, 14)


# ---------------------------------------------------------------- empty reports
@pytest.mark.parametrize("empty", ["", "   ", "NaN", "nan", "None", "null"])
def test_empty_report_gets_fourteen_blanks_and_is_counted(tmp_path, caplog, empty):
    src = _write_csv(tmp_path / "in.csv", [["id", "report"], ["1", REPORTS[0]], ["2", empty], ["3", REPORTS[2]]])
    out = tmp_path / "out.csv"
    with caplog.at_level(logging.INFO, logger="kdistill.labeler.command"):
        assert label_main([str(src), "--out", str(out), "--column", "report"]) == 0
    header, first, second, third = _rows(out)
    assert header == ["report", *CHEXPERT_COLUMNS]
    assert second == [empty] + [""] * 14  # not No Finding = 1.0
    assert dict(zip(header, first))["Cardiomegaly"] == "1.0"
    assert dict(zip(header, third))["No Finding"] == "1.0" and dict(zip(header, third))["Pneumothorax"] == "0.0"
    assert "1 empty reports left blank" in caplog.text


def test_is_empty_report():
    assert all(is_empty_report(x) for x in ("", " \n", "NaN", "NONE", "null", None, float("nan")))
    assert not any(is_empty_report(x) for x in ("No effusion.", "Nan Goldin", "0"))


# ---------------------------------------------------------------- output path
def test_out_that_is_a_folder_is_refused(tmp_path):
    src = _write_csv(tmp_path / "in.csv", [[r] for r in REPORTS])
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "keep.txt").write_text("not ours")
    with pytest.raises(DataError, match="existing folder") as info:
        label_main([str(src), "--out", str(folder)])
    assert info.value.path == str(folder)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_out_that_is_the_input_is_refused(tmp_path):
    src = _write_csv(tmp_path / "in.csv", [[r] for r in REPORTS])
    before = src.read_bytes()
    with pytest.raises(DataError, match="is the input file"):
        label_main([str(src), "--out", str(src)])
    assert src.read_bytes() == before


# ---------------------------------------------------------------- encodings
def test_latin1_input_names_file_line_and_byte(tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes("No effusion.\nMild cardiomegaly.\nCaf\u00e9 au lait spots, no pneumothorax.\n".encode("latin-1"))
    error = _refused(src, tmp_path / "out.csv", r"line 3: byte 0xe9 is not UTF-8 \(is the file latin-1")
    assert error.path == str(src)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_input_with_a_byte_order_mark_is_read(tmp_path, encoding):
    src = tmp_path / "in.csv"
    text = "".join(f'"{r}"\n' for r in REPORTS)
    raw = text.encode(encoding)
    if encoding == "utf-16-be":
        raw = b"\xfe\xff" + raw  # the BE codec writes no mark of its own
    src.write_bytes(raw)
    assert read_reports(src) == REPORTS
    out = tmp_path / "out.csv"
    assert label_main([str(src), "--out", str(out)]) == 0
    assert [r[0] for r in _rows(out)[1:]] == REPORTS


def test_utf16_without_byte_order_mark_is_refused(tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes("No effusion.\nMild cardiomegaly.\n".encode("utf-16-le"))
    _refused(src, tmp_path / "out.csv", "UTF-16 or UTF-32 text without a byte-order mark")


# ---------------------------------------------------------------- read_labels
def test_read_labels_round_trips_the_output_and_names_bad_cells(tmp_path):
    src = _write_csv(tmp_path / "in.csv", [[r] for r in REPORTS])
    out = tmp_path / "out.csv"
    label_main([str(src), "--out", str(out)])
    texts, labels = read_labels(out)
    assert texts == REPORTS and labels.dtype == np.float32
    rows = _rows(out)
    rows[2][3] = "2.0"  # Cardiomegaly of the second report
    bad = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match="line 3, column 'Cardiomegaly'"):
        read_labels(bad)
    with pytest.raises(DataError, match="missing columns"):
        read_labels(src, column="Reports")
