"""The Study record every loader produces (DESIGN.md, "Data contracts")."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from kdistill.labels import NUM_FINDINGS


@dataclasses.dataclass
class Roi:
    """An expert region for one finding of one image. ``box`` is (x0, y0, x1, y1) in pixel
    coordinates of the stored image; ``mask`` a path (relative to the dataset root) to a
    binary PNG of the stored image's size. At least one of the two is set."""

    finding: str
    dicom_id: str = ""
    box: tuple[float, float, float, float] | None = None
    mask: str | None = None


@dataclasses.dataclass
class Study:
    study_id: str
    subject_id: str
    split: str  # train / validate / test
    image_paths: list[str]  # absolute, or relative to the dataset root
    view: str  # PA / AP / LATERAL / ...
    findings: str = ""
    impression: str = ""
    labels: list[float] = dataclasses.field(default_factory=lambda: [math.nan] * NUM_FINDINGS)
    rois: list[Roi] = dataclasses.field(default_factory=list)
    dicom_ids: list[str] = dataclasses.field(default_factory=list)
    # What a source knows beyond the contract (NIH: its own labels, age, sex, follow-up number)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def report(self) -> str:
        """The report text the pipeline works on: FINDINGS then IMPRESSION, with their headers."""
        from kdistill.data.sections import report_text

        return report_text(self.findings, self.impression)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
