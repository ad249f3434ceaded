"""What one phantom study is made of, before anything is drawn or written: the finding
instances (with laterality, severity, place) and the study's identity.  The sampler produces
these; the renderer, report writer and file writer consume them."""
from __future__ import annotations

import dataclasses
from typing import Any


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
    shortcut: bool = False
    lateral_dicom_id: str | None = None  # a second, LATERAL image (PA studies only)

    @property
    def relpath(self) -> str:
        """``files/pNN/pSUBJECT/sSTUDY`` (the study folder; the report is this + ``.txt``)."""
        return f"files/p{self.subject_id[:2]}/p{self.subject_id}/s{self.study_id}"
