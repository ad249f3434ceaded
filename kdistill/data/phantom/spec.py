"""What one phantom study is made of, before anything is drawn or written: the finding
instances (with laterality, severity, place) and the study's identity.  The sampler produces
these; the renderer, report writer and file writer consume them."""
from __future__ import annotations

import dataclasses
from typing import Any

# Random streams of one study: numpy generators seeded [StudyPlan.seed, k] (patient parts:
# [patient_seed, k]).  Taken: 0 patient anatomy, 1 study anatomy, 2 vessel markings, 3 noise,
# 4 report wording, 5 breast shadows, 7-9 lateral view, 100 + finding index each finding.  Each
# knob below draws from its own stream, so turning it on moves no pixel or word it is not about.
STREAM_SHORTCUT = 10  # the marker draw of validate/test studies (train: the sampler's stream, as before)
STREAM_ROIS = 11  # whether a train study keeps its regions (rois_fraction)
STREAM_REPORT_STYLE = 12  # whether, and how, the report names a cause in place of findings


@dataclasses.dataclass
class FindingSpec:
    """One finding present in the image."""

    laterality: str = "none"  # left / right / bilateral / none (patient's side)
    severity: str | None = None  # small / moderate / large, None where not graded
    zone: str | None = None  # upper / middle / lower, for parenchymal findings
    hedged: bool = False  # the report states it with uncertainty (label -1)
    omitted: bool = False  # label noise: visible but not mentioned (label blank)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # devices, rib number

    @property
    def sides(self) -> tuple[str, ...]:
        if self.laterality == "bilateral":
            return ("right", "left")
        if self.laterality in ("left", "right"):
            return (self.laterality,)
        return ()


@dataclasses.dataclass
class StudyPlan:
    index: int
    subject_id: str
    study_id: str
    dicom_id: str
    split: str
    view: str  # PA / AP
    study_date: int
    study_time: str
    sex: str
    patient_seed: int  # anatomy shared by a subject's studies
    seed: int  # everything else of this study
    findings: dict[str, FindingSpec] = dataclasses.field(default_factory=dict)
    shortcut: bool = False  # the corner marker is drawn (frontal and lateral image)
    shortcut_positive: bool = False  # the shortcut finding is labelled 1 (what the marker follows)
    keep_rois: bool = True  # rois.jsonl keeps this study's regions (rois_fraction)
    lateral_dicom_id: str | None = None  # a second, LATERAL image (PA studies only)

    @property
    def relpath(self) -> str:
        """``files/pNN/pSUBJECT/sSTUDY`` (the study folder; the report is this + ``.txt``)."""
        return f"files/p{self.subject_id[:2]}/p{self.subject_id}/s{self.study_id}"


@dataclasses.dataclass(frozen=True)
class ImpliedCause:
    """A report that names ``syndrome`` (findings.yaml ``syndromes:``) and leaves out the
    findings ``omitted`` it brings, as real reports do (report_style.implied_share)."""

    syndrome: str
    omitted: tuple[str, ...]
    findings_sentence: str | None  # None: not stated in the findings section
    impression_sentence: str | None  # None: a required finding's own statement names the cause
