"""Split a free-text radiology report into sections and pull out FINDINGS and IMPRESSION.

Follows the approach of MIMIC-CXR's ``section_parser.py`` (MIT-LCP/mimic-cxr, txt/), written
afresh:

* A section header is a line starting with a name and a colon. Names in capitals are always
  headers (``FINDINGS:``, ``PA AND LATERAL VIEWS OF THE CHEST:``); a name in any other case is
  a header only when it is a known section name (``Impression:``), so "Heart size: normal"
  stays text.
* Names are normalised: spelling variants and typos seen in MIMIC (``IMPRESSON``,
  ``FINDINS``), synonyms (``CONCLUSION``/``SUMMARY`` -> impression, ``REASON FOR EXAM`` ->
  indication), combined sections (``FINDINGS AND IMPRESSION``, ``FINDINGS/IMPRESSION`` ->
  impression, as MIMIC does), and view descriptions (``CHEST, PA AND LATERAL``,
  ``PORTABLE AP CHEST``) -> findings.
* Everything before ``FINAL REPORT`` (the ``WET READ`` preliminary read and its
  timestamps) is a ``wet read`` section and never feeds findings or impression.
* Empty findings/impression sections (a title line such as ``CHEST, PA LATERAL:`` followed
  by an ``INDICATION:``) are dropped; repeated ones are joined.
* No findings and no impression: the last paragraph of the last section that may hold
  findings (preamble / unnamed text, never indication, history, technique, comparison,
  notification, recommendations or the wet read) becomes the impression, the paragraphs
  before it the findings - MIMIC's "last_paragraph" fallback.
* Text is normalised: line wraps and runs of spaces become one space.
"""
from __future__ import annotations

import re

FINDINGS = "findings"
IMPRESSION = "impression"
PREAMBLE = "preamble"
WET_READ = "wet read"

# Lower-cased header text -> normalised section name.
_NAMES = {
    "impression": IMPRESSION,
    "impressions": IMPRESSION,
    "conclusion": IMPRESSION,
    "conclusions": IMPRESSION,
    "summary": IMPRESSION,
    "opinion": IMPRESSION,
    "findings and impression": IMPRESSION,
    "findings and impressions": IMPRESSION,
    "findings/impression": IMPRESSION,
    "findings / impression": IMPRESSION,
    "findings/ impression": IMPRESSION,
    "impression/findings": IMPRESSION,
    "impression and findings": IMPRESSION,
    "findings": FINDINGS,
    "finding": FINDINGS,
    "reference findings": FINDINGS,
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "indication": "indication",
    "indications": "indication",
    "clinical indication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "reason for study": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "pfi": "history",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "technique": "technique",
    "procedure": "technique",
    "notification": "notification",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "addendum": "addendum",
    "wet read": WET_READ,
    "wetread": WET_READ,
    "final report": "final report",
    "date": "date",
    "comment": "comment",
    "comments": "comment",
    "note": "comment",
}
# Misspellings seen in MIMIC-CXR headers.
_TYPOS = {
    IMPRESSION: ("impresson", "imprression", "imoression", "impressoin", "imprssion", "impresion",
                 "imperssion", "mpression", "impession", "impressio"),
    FINDINGS: ("findins", "findindgs", "findgings", "findngs", "findnings", "finidngs", "fidnings"),
    "comparison": ("comparision", "comparsion", "comparrison", "comparisions"),
    "indication": ("idication", "indicaton"),
}
for _name, _variants in _TYPOS.items():
    for _variant in _variants:
        _NAMES[_variant] = _name

# Header text describing the whole study ("CHEST, PA AND LATERAL") holds the findings.
_VIEW_WORDS = re.compile(
    r"\b(chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal and|"
    r"two views|frontal view|pa view|ap view|one view|single view|lateral view|frontal upright|"
    r"frontal semi-upright|ribs|supine)\b"
)
# Names holding these words are those sections even when decorated ("FINAL IMPRESSION").
_MAIN_WORDS = ("impression", "findings", "history", "comparison", "addendum", "indication", "technique")
# Sections whose text may serve the last-paragraph fallback.
_FALLBACK_SOURCES = (PREAMBLE, "full report", "other", FINDINGS)

_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/,&'-]{0,60}?)[ \t]*:(?=\s|$)", re.MULTILINE)
_FINAL_REPORT = re.compile(r"^[ \t]*FINAL REPORT[ \t]*:?[ \t]*$", re.MULTILINE | re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def normalize_text(text: str) -> str:
    """Collapse line wraps and runs of whitespace into single spaces."""
    return re.sub(r"\s+", " ", text).strip()


def normalize_section_name(name: str) -> str:
    """A header as written -> its normalised section name (unknown names -> "other")."""
    key = re.sub(r"\s+", " ", name.strip().lower())
    if key in _NAMES:
        return _NAMES[key]
    if "impression" in key or ("finding" in key and "conclusion" in key):
        return IMPRESSION
    for word in _MAIN_WORDS:
        if word in key:
            return _NAMES.get(word, word)
    if _VIEW_WORDS.search(key):
        return FINDINGS
    return "other"


def split_sections(text: str) -> list[tuple[str, str]]:
    """Report text -> [(normalised name, raw body)], in order. The first entry is the text
    before any header (``preamble``, or ``full report`` when there is no header at all); text
    before ``FINAL REPORT`` is one ``wet read`` entry."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    sections: list[tuple[str, str]] = []
    final = _FINAL_REPORT.search(text)
    if final:
        head = text[: final.start()]
        if head.strip():
            sections.append((WET_READ, head))
        text = text[final.end():]
    headers = [m for m in _HEADER.finditer(text) if _is_header(m.group(1))]
    if not headers:
        sections.append(("full report", text))
        return sections
    sections.append((PREAMBLE, text[: headers[0].start()]))
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        sections.append((normalize_section_name(match.group(1)), text[match.end(): end]))
    return sections


def extract_sections(text: str) -> tuple[str, str]:
    """Report text -> (findings, impression), whitespace-normalised; either may be ""."""
    sections = split_sections(text)
    findings = " ".join(normalize_text(body) for name, body in sections if name == FINDINGS and body.strip())
    impression = " ".join(normalize_text(body) for name, body in sections if name == IMPRESSION and body.strip())
    if findings or impression:
        return findings, impression
    # Fallback: MIMIC's "last paragraph" rule, restricted to sections that can hold findings.
    candidates = [body for name, body in sections if name in _FALLBACK_SOURCES and body.strip()]
    if not candidates:
        return "", ""
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(candidates[-1].strip()) if p.strip()]
    impression = normalize_text(paragraphs[-1])
    findings = normalize_text(" ".join(paragraphs[:-1]))
    return findings, impression


def _is_header(name: str) -> bool:
    stripped = name.strip()
    if not stripped or not any(c.isalpha() for c in stripped):
        return False
    if stripped.upper() == stripped:
        return True
    return re.sub(r"\s+", " ", stripped.lower()) in _NAMES


# ----------------------------------------------------------------------------- report text

_SECTION_LABEL = re.compile(r"\b(?:findings|impression)\s*:\s*", re.IGNORECASE)


def report_text(findings: str, impression: str, order: str = "findings_first", headers: bool = True) -> str:
    """The report as the pipeline works on it: the FINDINGS and IMPRESSION sections.

    ``headers``: "FINDINGS: ..." and "IMPRESSION: ..." on their own lines (what the student
    learns to write and a study's ``report``); without, the two texts joined by a space (the
    reference text eval scores against). ``order``: "findings_first" as in MIMIC, or
    "impression_first" (the label-dense summary first, so it survives a cut).
    """
    if order not in ("findings_first", "impression_first"):
        raise ValueError(f"unknown report order {order!r}")
    parts = [(name, text.strip()) for name, text in (("FINDINGS", findings or ""), ("IMPRESSION", impression or ""))
             if text and text.strip()]
    if order == "impression_first":
        parts.reverse()
    if headers:
        return "\n".join(f"{name}: {text}" for name, text in parts)
    return " ".join(text for _, text in parts)


def strip_headers(text: str) -> str:
    """FINDINGS:/IMPRESSION: headers are layout, not content: removed (for text overlap metrics)."""
    return _SECTION_LABEL.sub(" ", text).strip()
