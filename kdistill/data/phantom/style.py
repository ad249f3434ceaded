"""The report_style regime (``PhantomConfig.report_style``): reports that name a cause or
syndrome in place of the findings it brings, as real reports do ("Findings are consistent with
congestive heart failure." where the image shows cardiomegaly, edema and effusions), and the
label file that follows the project's labeler rather than the truth.

A study *has* a syndrome of findings.yaml (``syndromes:``) when its report would state present
(label 1) every finding the syndrome ``requires`` and at least ``needs`` of those it ``brings``.
Such a study, with probability ``implied_share``, gets a report that names the syndrome and
leaves out a non-empty random subset of those findings; ``impression_only_share`` of these name
it in the impression only.  The omission always hides at least one left-out finding from the
labeler (else every finding it brings is left out), so exactly these studies have a label row
that differs from the truth.  Each draw comes from the study's own stream (``STREAM_REPORT_STYLE``):
images, regions and the other studies' reports do not move, and a larger share keeps the
implied studies of a smaller one.

Labels: ``true_labels`` is what a complete report of the image says (the default phantom's
label row, with label-noise omissions restored); ``labeled`` is what the project's rule-based
labeler (``kdistill.labeler.label_report``) reads in the findings and impression sections.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from kdistill.labels import FINDING_INDEX
from kdistill.data.phantom.config import PhantomConfig
from kdistill.data.phantom.knowledge import Knowledge
from kdistill.data.phantom.report import IMPRESSION_ORDER, Report, write_report
from kdistill.data.phantom.sampler import label_positive
from kdistill.data.phantom.spec import STREAM_REPORT_STYLE, ImpliedCause, StudyPlan

OMIT_EACH = 0.7  # chance that each finding the syndrome brings is left out (at least one is)


@dataclasses.dataclass
class StudyReport:
    report: Report  # the written report
    labels: np.ndarray  # (14,) the chexpert.csv row
    truth: np.ndarray  # (14,) the ground_truth.csv row
    implied: ImpliedCause | None


def syndromes_of(plan: StudyPlan, know: Knowledge) -> list[str]:
    """The syndromes a study has (in findings.yaml order)."""
    stated = {n for n, s in plan.findings.items() if label_positive(s)}
    return [name for name, info in know.syndromes.items()
            if set(info.requires) <= stated and len(set(info.brings) & stated) >= info.needs]


def true_labels(plan: StudyPlan, labels: np.ndarray) -> np.ndarray:
    """The complete report's labels: ``labels`` of the default-style report, with every finding
    label noise left unstated put back (1, or -1 where hedged)."""
    truth = labels.copy()
    for name, spec in plan.findings.items():
        if spec.omitted:
            truth[FINDING_INDEX[name]] = -1.0 if spec.hedged else 1.0
    if any(n in plan.findings for n in IMPRESSION_ORDER):
        truth[FINDING_INDEX["No Finding"]] = math.nan
    return truth


def choose_implied(plan: StudyPlan, cfg: PhantomConfig, know: Knowledge) -> ImpliedCause | None:
    """Whether the study's report names one of its syndromes, which, and what it leaves out."""
    style = cfg.report_style
    candidates = syndromes_of(plan, know) if style.active else []
    if not candidates:
        return None
    rng = np.random.default_rng([plan.seed, STREAM_REPORT_STYLE])
    if rng.random() >= style.implied_share:
        return None
    info = know.syndromes[candidates[int(rng.integers(len(candidates)))]]
    stated = [f for f in info.brings if f in plan.findings and label_positive(plan.findings[f])]
    omitted = [f for f in stated if rng.random() < OMIT_EACH] or [stated[int(rng.integers(len(stated)))]]
    impression_only = rng.random() < style.impression_only_share
    findings_sentence = impression_sentence = None
    if info.findings_phrases:
        findings_sentence = info.findings_phrases[int(rng.integers(len(info.findings_phrases)))]
        impression_sentence = info.impression_phrases[int(rng.integers(len(info.impression_phrases)))]
    return ImpliedCause(info.name, tuple(omitted), None if impression_only else findings_sentence, impression_sentence)


def _read(report: Report) -> np.ndarray:
    from kdistill.labeler import label_report  # only in the regime: the default phantom never loads it

    return label_report(report.findings + "\n" + report.impression)


def _hides(labels: np.ndarray, truth: np.ndarray, omitted: tuple[str, ...]) -> bool:
    """Some left-out finding is not labelled as the truth has it (the labeler missed it)."""
    return any(labels[FINDING_INDEX[f]] != truth[FINDING_INDEX[f]] for f in omitted)


def study_report(plan: StudyPlan, cfg: PhantomConfig, know: Knowledge) -> StudyReport:
    """The report of one study, its chexpert.csv row and its ground_truth.csv row."""
    report = write_report(plan, know, np.random.default_rng([plan.seed, 4]))
    truth = true_labels(plan, report.labels)
    if not cfg.report_style.active:
        return StudyReport(report, report.labels, truth, None)
    implied = choose_implied(plan, cfg, know)
    if implied is not None:
        report = write_report(plan, know, np.random.default_rng([plan.seed, 4]), implied)
    labels = _read(report)
    if implied is not None and not _hides(labels, truth, implied.omitted):  # the labeler read them in the cause's wording
        info = know.syndromes[implied.syndrome]
        everything = tuple(f for f in info.brings if f in plan.findings and label_positive(plan.findings[f]))
        implied = dataclasses.replace(implied, omitted=everything)
        report = write_report(plan, know, np.random.default_rng([plan.seed, 4]), implied)
        labels = _read(report)
    return StudyReport(report, labels, truth, implied)
