"""The teacher's prompt template, versioned, in three modes.

A ``labels+report`` prompt names the study's labelled findings (positive and uncertain, with
laterality and severity words taken from the report) and quotes the report; the teacher never
sees the image. Corpus rationale docs carry the same information (``findings`` +
``attributes``), so the same template turns them into prompt -> rationale training pairs.

Layout (report first, findings last, so the line the rationale must explain sits right before
it whatever the report's length)::

    Report: FINDINGS: ... IMPRESSION: ...
    Findings: Pleural Effusion (left, small); Cardiomegaly (uncertain)
    Rationale:

``PROMPT_MODES``: ``labels+report`` (the layout above), ``report`` (the ``Report:`` line
alone: the teacher must name and explain the findings itself, which is where what it learned
from the corpus shows) and ``labels`` (the ``Findings:`` line alone). A teacher is trained and
used in one mode; the rationale cache records the mode and refuses another.

Bump ``PROMPT_VERSION`` whenever the text a prompt produces changes: the rationale cache
records it and refuses to mix versions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from kdistill.labels import FINDINGS

PROMPT_VERSION = "3"
RATIONALE_MARKER = "Rationale:"
NO_FINDINGS = "none"
NO_REPORT = "none."
PROMPT_MODES = ("labels+report", "report", "labels")
DEFAULT_MODE = "labels+report"

# Words that locate a finding in a report sentence; used only to pick the sentence from which
# laterality / severity words are read (labelling itself is the labeler's job).
_MENTIONS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelecta", "collapse"),
    "Cardiomegaly": ("cardiomegaly", "heart size", "cardiac silhouette", "heart is enlarged"),
    "Consolidation": ("consolidat",),
    "Edema": ("edema", "oedema", "vascular congestion"),
    "Enlarged Cardiomediastinum": ("mediastin",),
    "Fracture": ("fracture",),
    "Lung Lesion": ("nodule", "mass", "lesion"),
    "Lung Opacity": ("opacit",),
    "Pleural Effusion": ("effusion",),
    "Pleural Other": ("pleural thickening", "pleural plaque", "fibrosis"),
    "Pneumonia": ("pneumonia", "infection"),
    "Pneumothorax": ("pneumothora",),
    "Support Devices": ("tube", "line", "catheter", "pacemaker", "device", "wire", "clip"),
}
_LATERALITY = (("bilateral", "bilateral"), ("bibasilar", "bilateral"), ("bilaterally", "bilateral"),
               ("both", "bilateral"), ("left", "left"), ("right", "right"))
# Report severity words -> the three grades corpus docs use (small / moderate / large), so a
# study's prompt and a corpus pair's prompt say the same thing. Multi-word phrases first.
_SEVERITY: tuple[tuple[str, str], ...] = (
    ("minimally displaced", "moderate"), ("nondisplaced", "small"), ("non-displaced", "small"),
    ("trace", "small"), ("tiny", "small"), ("small", "small"), ("minimal", "small"), ("mild", "small"),
    ("mildly", "small"), ("subsegmental", "small"), ("faint", "small"), ("early", "small"),
    ("subcentimeter", "small"), ("focal", "small"),
    ("moderate", "moderate"), ("moderately", "moderate"), ("patchy", "moderate"), ("multifocal", "moderate"),
    ("large", "large"), ("severe", "large"), ("severely", "large"), ("marked", "large"), ("markedly", "large"),
    ("extensive", "large"), ("massive", "large"), ("dense", "large"), ("diffuse", "large"), ("displaced", "large"),
)
_SENTENCE = re.compile(r"(?<=[.!?;\n])\s+")


@dataclass(frozen=True)
class FindingMention:
    name: str
    uncertain: bool = False
    laterality: str | None = None
    severity: str | None = None

    def text(self) -> str:
        words = [w for w in (self.laterality, self.severity) if w]
        if self.uncertain:
            words.append("uncertain")
        return f"{self.name} ({', '.join(words)})" if words else self.name


def findings_line(mentions: Sequence[FindingMention]) -> str:
    """Findings in the fixed FINDINGS order, so equal finding sets give equal prompts."""
    order = {name: i for i, name in enumerate(FINDINGS)}
    ordered = sorted(mentions, key=lambda m: order.get(m.name, len(order)))
    return "; ".join(m.text() for m in ordered) if ordered else NO_FINDINGS


def check_mode(mode: str) -> str:
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt_mode must be one of {', '.join(PROMPT_MODES)}, got {mode!r}")
    return mode


def format_prompt(mentions: Sequence[FindingMention], report: str, mode: str = DEFAULT_MODE) -> str:
    report = " ".join(report.split()) or NO_REPORT
    lines = {"labels+report": [f"Report: {report}", f"Findings: {findings_line(mentions)}"],
             "report": [f"Report: {report}"],
             "labels": [f"Findings: {findings_line(mentions)}"]}[check_mode(mode)]
    return "\n".join(lines + [RATIONALE_MARKER])


def attributes_from_report(finding: str, report: str) -> tuple[str | None, str | None]:
    """(laterality, severity) words of the first report sentence that mentions ``finding``."""
    keys = _MENTIONS.get(finding, (finding.lower(),))
    for sentence in _SENTENCE.split(report.lower()):
        if any(k in sentence for k in keys):
            words = set(re.findall(r"[a-z]+", sentence))
            laterality = next((v for w, v in _LATERALITY if w in words), None)
            padded = " " + " ".join(re.findall(r"[a-z-]+", sentence)) + " "
            severity = next((grade for w, grade in _SEVERITY if f" {w} " in padded), None)
            return laterality, severity
    return None, None


def study_mentions(labels: Sequence[float], report: str) -> list[FindingMention]:
    """Positive (1) and uncertain (-1) findings of a study, "No Finding" left out."""
    out = []
    for name, value in zip(FINDINGS, labels):
        if name == "No Finding" or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if value in (1, 1.0, -1, -1.0):
            laterality, severity = attributes_from_report(name, report)
            out.append(FindingMention(name, uncertain=value == -1, laterality=laterality, severity=severity))
    return out


def doc_mentions(doc: Mapping[str, Any]) -> list[FindingMention]:
    """Mentions of a corpus rationale doc (its ``findings`` and ``attributes``)."""
    attributes = doc.get("attributes") or {}
    out = []
    for name in doc.get("findings") or []:
        if name == "No Finding":
            continue
        attr = attributes.get(name) or {}
        out.append(FindingMention(
            name,
            uncertain=bool(attr.get("uncertain", False)),
            laterality=attr.get("laterality") or None,
            severity=attr.get("severity") or None,
        ))
    return out


@dataclass
class BuiltPrompt:
    text: str
    truncated: bool
    n_findings: int = 0  # positive + uncertain findings of the study (what the rationale covers)


def build_prompt(
    mentions: Sequence[FindingMention],
    report: str,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
    mode: str = DEFAULT_MODE,
) -> BuiltPrompt:
    """The prompt, with the report cut (from its end, marked "...") when the whole prompt
    would exceed ``max_tokens``; the findings are never cut."""
    text = format_prompt(mentions, report, mode)
    n = len(mentions)
    if count_tokens is None or max_tokens is None or count_tokens(text) <= max_tokens:
        return BuiltPrompt(text, False, n)
    words = report.split()
    lo, hi = 0, len(words)  # binary search for the longest report prefix that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(format_prompt(mentions, " ".join(words[:mid]) + " ...", mode)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return BuiltPrompt(format_prompt(mentions, " ".join(words[:lo]) + " ...", mode), True, n)


def prompt_for_study(study: Any, count_tokens=None, max_tokens=None, mode: str = DEFAULT_MODE) -> BuiltPrompt:
    """Prompt of a ``kdistill.data.study.Study`` (its labels and report)."""
    report = study.report
    return build_prompt(study_mentions(study.labels, report), report, count_tokens, max_tokens, mode)
