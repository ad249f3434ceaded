"""``kdistill label INPUT.csv --out OUT.csv``: label reports, one per CSV row.

Input is either a headerless one-column CSV (one report per row, as the CheXpert labeler
takes) or, with ``--column NAME``, a CSV with a header row whose column NAME holds the
reports.  Output: the report column plus the 14 findings in the CheXpert labeler's column
order, with its values 1.0 / 0.0 / -1.0 / empty.  The output appears whole or not at all.

What the command refuses, rather than guess (each a ``DataError`` naming the file):

* a quote that is never closed, or closed in the middle of a field: read as CSV, it would
  swallow the rows after it into one report, so rows out would no longer equal rows in; the
  error names the line where the broken row starts;
* text that is not UTF-8: the byte and its line are named (latin-1 / Windows-1252 files are
  the usual cause).  UTF-8, UTF-16 and UTF-32 files with a byte-order mark are read as such;
  UTF-16 without one is named as such;
* ``--out`` that is an existing folder, or the input file itself.

An empty report (blank, or the text "NaN" / "None" / "null" a dataframe writes for a missing
value) states nothing: its 14 columns stay empty - not the No Finding = 1.0 an empty text gets
from the aggregation rule - and the log counts such rows.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import io
import logging
import math
from pathlib import Path

import numpy as np

from kdistill.errors import DataError
from kdistill.io import write_text_atomic
from kdistill.labels import FINDING_INDEX, NUM_FINDINGS, parse_label

log = logging.getLogger(__name__)

# Column order of stanfordmlgroup/chexpert-labeler's output (constants.CATEGORIES).
CHEXPERT_COLUMNS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
REPORT_COLUMN = "Reports"
EMPTY_TEXTS = frozenset({"", "nan", "none", "null"})  # what a dataframe writes for a missing report
# Byte-order marks, longest first (UTF-32 LE starts with UTF-16 LE's mark).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def is_empty_report(text: object) -> bool:
    """True for a report that states nothing: None, NaN, blank, or the text "NaN" / "None" / "null"."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return True
    return str(text).strip().lower() in EMPTY_TEXTS


def read_text(path: str | Path) -> str:
    """A text file's contents: UTF-8, or UTF-8/16/32 with a byte-order mark; anything else is a
    DataError naming the first byte that does not decode and its line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "input file not found") from None
    except IsADirectoryError:
        raise DataError(path, "input is a directory, expected a CSV file") from None
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), None)
    if encoding is None and b"\x00" in raw[:4096]:
        raise DataError(path, "contains NUL bytes: it looks like UTF-16 or UTF-32 text without a byte-order mark; "
                              "save it as UTF-8")
    try:
        return raw.decode(encoding or "utf-8")
    except UnicodeDecodeError as err:
        if encoding and encoding != "utf-8-sig":
            raise DataError(path, f"starts with a {encoding.upper()} byte-order mark but does not decode as "
                                  f"{encoding.upper()}: {err.reason}") from None
        line = raw.count(b"\n", 0, err.start) + 1
        byte = raw[err.start]
        raise DataError(path, f"line {line}: byte 0x{byte:02x} is not UTF-8 (is the file latin-1 or Windows-1252?); "
                              "save it as UTF-8") from None


def read_rows(path: str | Path) -> list[tuple[int, list[str]]]:
    """CSV records as (line where the record starts, fields), read strictly: a quote that is never
    closed, or closed mid-field, is a DataError naming its line instead of a silent merge of rows."""
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DataError(path, "input file is empty")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                problem = "a quote opened in this row is never closed (every row after it would be read as part of it)"
            else:
                problem = f"a quote closes in the middle of a field ({err}); the rows after it would merge into this one"
            raise DataError(path, f"line {start}: {problem}; fix the quoting (a quote inside a quoted field is "
                                  'written twice: "")') from None
        rows.append((start, row))
        start = reader.line_num + 1


def read_reports(path: str | Path, column: str | None = None) -> list[str]:
    """Reports from a CSV: headerless one column, or the named column of a CSV with a header."""
    path = Path(path)
    rows = read_rows(path)
    if column is not None:
        (_, header), body = rows[0], rows[1:]
        if column not in header:
            raise DataError(path, f"no column {column!r}; the header has {header}")
        index = header.index(column)
        return [row[index] if index < len(row) else "" for _, row in body if row]
    reports = []
    for line, row in rows:
        if not row:
            continue
        if sum(1 for cell in row if cell.strip()) > 1:
            raise DataError(path, f"line {line} has {len(row)} columns; a headerless input holds one report per row "
                                  "(give --column NAME for a CSV with a header)")
        reports.append(next((cell for cell in row if cell.strip()), ""))
    return reports


def read_labels(path: str | Path, column: str = REPORT_COLUMN) -> tuple[list[str], np.ndarray]:
    """A CSV in this command's output format (a report column and the 14 CheXpert columns; other
    columns are ignored) -> (reports, (n, 14) float32 labels in kdistill.labels.FINDINGS order)."""
    path = Path(path)
    rows = read_rows(path)
    (_, header), body = rows[0], rows[1:]
    missing = [name for name in (column, *CHEXPERT_COLUMNS) if name not in header]
    if missing:
        raise DataError(path, f"missing columns {missing}")
    where = {name: header.index(name) for name in (column, *CHEXPERT_COLUMNS)}
    reports, labels = [], np.full((len(body), NUM_FINDINGS), np.nan, dtype=np.float32)
    for i, (line, row) in enumerate(body):
        row = row + [""] * (len(header) - len(row))
        reports.append(row[where[column]])
        for name in CHEXPERT_COLUMNS:
            try:
                labels[i, FINDING_INDEX[name]] = parse_label(row[where[name]])
            except ValueError as err:
                raise DataError(path, f"line {line}, column {name!r}: {err}") from None
    return reports, labels


def format_value(value: float) -> str:
    return "" if math.isnan(value) else f"{float(value):.1f}"


def write_labels(path: str | Path, reports: list[str], labels, report_column: str = REPORT_COLUMN) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([report_column, *CHEXPERT_COLUMNS])
    order = [FINDING_INDEX[name] for name in CHEXPERT_COLUMNS]
    for report, row in zip(reports, labels):
        writer.writerow([report, *(format_value(float(row[i])) for i in order)])
    write_text_atomic(path, buffer.getvalue())


def check_output(out: str | Path, input_path: str | Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise DataError(out, "--out is an existing folder; give the path of the CSV file to write")
    if out.exists() and out.resolve() == Path(input_path).resolve():
        raise DataError(out, "--out is the input file; write the labels to another file")
    return out


def label_texts(texts: list[str], label_fn) -> tuple[np.ndarray, int]:
    """-> ((n, 14) labels, number of empty reports); empty reports get 14 blanks, unlabelled."""
    labels = np.full((len(texts), NUM_FINDINGS), np.nan, dtype=np.float32)
    stated = [i for i, text in enumerate(texts) if not is_empty_report(text)]
    if stated:
        labels[stated] = label_fn([texts[i] for i in stated])
    return labels, len(texts) - len(stated)


def main(argv: list[str] | None = None, prog: str = "kdistill label") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Label radiology reports (one per CSV row) with the 14 CheXpert findings: "
        "1.0 positive, 0.0 negative, -1.0 uncertain, empty not mentioned.",
    )
    parser.add_argument("input", help="CSV of reports: one per row, headerless unless --column is given")
    parser.add_argument("--out", required=True, help="output CSV (report + 14 CheXpert columns)")
    parser.add_argument("--column", default=None, help="name of the report column in a CSV with a header row")
    parser.add_argument(
        "--sections", choices=("all", "findings-impression"), default="all",
        help="label the whole text (default), or only its FINDINGS and IMPRESSION sections",
    )
    parser.add_argument("--chexbert", default=None, help="CheXbert checkpoint (chexbert.pth) to label with instead of the rules")
    parser.add_argument("--tokenizer", default=None, help="local bert-base-uncased tokenizer directory (with --chexbert)")
    args = parser.parse_args(argv)
    if args.chexbert and not args.tokenizer:
        parser.error("--chexbert needs --tokenizer (a local bert-base-uncased tokenizer directory)")

    out = check_output(args.out, args.input)
    reports = read_reports(args.input, args.column)
    texts = reports
    if args.sections == "findings-impression":
        from kdistill.data.sections import extract_sections

        texts = [" ".join(part for part in extract_sections(r) if part) for r in reports]
    from kdistill.labeler import get_labeler

    label_fn, metric = get_labeler(args.chexbert, args.tokenizer)
    labels, empty = label_texts(texts, label_fn)
    if len(labels) != len(reports):  # cannot happen: one output row per input row, always
        raise RuntimeError(f"{len(reports)} reports in, {len(labels)} label rows out")
    write_labels(out, reports, labels, args.column or REPORT_COLUMN)
    log.info("labelled %d reports (%s labeler) -> %s; %d empty reports left blank", len(reports),
             metric.removesuffix("_f1"), out, empty)
    return 0
