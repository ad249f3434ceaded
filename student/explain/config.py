"""``ExplainConfig``: the ``explain`` section of a run config and the knobs of ``kdistill explain``."""
from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class ExplainConfig:
    split: str = "test"  # prepared-cache split to explain
    max_studies: int = 16
    batch_size: int = 8
    # Tokens per generated text; None: as many as the checkpoint's max_text_len allows (the most
    # it was trained to write). Generation stops earlier at end-of-text.
    max_new_tokens: int | None = None
    # Saliency method drawn on the pages (student.explain.saliency.METHODS, `--saliency`):
    # "attention" (the student's class-query attention), "gradcam", or "fused" (Grad-CAM x
    # occlusion; about 64 forward passes per map); the maps kdistill eval scores under these names.
    saliency: str = "attention"
    # Per-map figures shown where their inputs exist (student.explain.saliency.FIGURES):
    # "energy_in_region" needs an expert region of the finding; "deletion_auc" costs
    # 4 x (deletion_steps + 1) forward passes per map (deletion and insertion, map and random
    # order).
    figures: list[str] = dataclasses.field(default_factory=lambda: ["energy_in_region", "deletion_auc"])
    # Which maps get the figures: "positive" (findings decided positive or labelled positive in
    # the reference: the maps a reader acts on) or "all" (every drawn map; deletion_auc then costs
    # 13 x its passes per study).
    figures_on: Literal["positive", "all"] = "positive"
    deletion_steps: int = 10
    # Longest side, in pixels, of the radiograph written for the study page (image files are
    # read at full size; a prepared cache holds its own size, which is never enlarged).
    display_size: int = 512

    def validate(self) -> None:
        from student.explain.saliency import FIGURES, METHODS

        for name in ("max_studies", "batch_size", "display_size", "deletion_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1 (or null: the checkpoint's max_text_len)")
        if self.saliency not in METHODS:
            raise ValueError(f"unknown saliency method {self.saliency!r}; available: {', '.join(METHODS)}")
        unknown = [f for f in self.figures if f not in FIGURES]
        if unknown:
            raise ValueError(f"unknown map figure(s) {unknown}; available: {', '.join(FIGURES)}")
