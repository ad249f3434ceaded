"""``kdistill label INPUT.csv --out OUT.csv``: label reports, one per CSV row.

Input is either a headerless one-column CSV (one report per row, as the CheXpert labeler
takes) or, with ``--column NAME``, a CSV with a header row whose column NAME holds the
reports.  Output: the report column plus the 14 findings in the CheXpert labeler's column
order, with its values 1.0 / 0.0 / -1.0 / empty.  The output appears whole or not at all.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
from pathlib import Path

from kdistill.config import write_text_atomic
from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX

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


def read_reports(path: str | Path, column: str | None = None) -> list[str]:
    """Reports from a CSV: headerless one column, or the named column of a CSV with a header."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(path, "input file not found") from None
    except IsADirectoryError:
        raise DataError(path, "input is a directory, expected a CSV file") from None
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text: {err}") from None
    if not text.strip():
        raise DataError(path, "input file is empty")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise DataError(path, f"not a readable CSV: {err}") from None
    if column is not None:
        header, body = rows[0], rows[1:]
        if column not in header:
            raise DataError(path, f"no column {column!r}; the header has {header}")
        index = header.index(column)
        return [row[index] if index < len(row) else "" for row in body if row]
    reports = []
    for number, row in enumerate(rows, start=1):
        if not row:
            continue
        if sum(1 for cell in row if cell.strip()) > 1:
            raise DataError(path, f"row {number} has {len(row)} columns; a headerless input holds one report per row "
                                  "(give --column NAME for a CSV with a header)")
        reports.append(next((cell for cell in row if cell.strip()), ""))
    return reports


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

    reports = read_reports(args.input, args.column)
    texts = reports
    if args.sections == "findings-impression":
        from kdistill.data.sections import extract_sections

        texts = [" ".join(part for part in extract_sections(r) if part) for r in reports]
    from kdistill.labeler import get_labeler

    label_fn, metric = get_labeler(args.chexbert, args.tokenizer)
    labels = label_fn(texts)
    write_labels(args.out, reports, labels, args.column or REPORT_COLUMN)
    log.info("labelled %d reports (%s labeler) -> %s", len(reports), metric.removesuffix("_f1"), args.out)
    return 0
