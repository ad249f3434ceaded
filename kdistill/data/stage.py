"""The ``data`` pipeline stage: synthesise the phantom dataset, or point at the user's own dataset
root of any registered source (``kdistill.data.sources``: mimic, chexpert, ...)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kdistill.data.phantom.config import PhantomConfig


@dataclasses.dataclass
class DataConfig:
    source: str = "phantom"  # phantom, or a kdistill.data.sources name (mimic, chexpert, ...)
    root: str | None = None  # the dataset root for real data; required unless phantom
    phantom: PhantomConfig = dataclasses.field(default_factory=PhantomConfig)
    # mimic only: the separate MIMIC-CXR reports tree (MIMIC-CXR-JPG ships no texts), and which
    # label file to read (the chexpert labeler's, or negbio's: mimic-cxr-2.0.0-negbio.csv.gz)
    reports_root: str | None = None
    labels: str = "chexpert"

    def source_options(self) -> dict[str, Any]:
        """The loader options of ``kdistill.data.sources.open_source`` this config sets."""
        opts: dict[str, Any] = {}
        if self.reports_root:
            opts["reports_root"] = self.reports_root
        if self.labels != "chexpert":
            opts["labels"] = self.labels
        return opts

    def validate(self) -> None:
        from kdistill.data.sources import source_names

        known = ("phantom", *source_names())
        if self.source not in known:
            raise ValueError(f"data.source {self.source!r} is not one of {', '.join(known)}")
        if self.source != "phantom" and not self.root:
            raise ValueError(f"data.root is required when data.source is {self.source!r}")
        if self.source == "phantom" and self.root:
            raise ValueError("data.root is for a real source; the phantom is written into the run's data/ folder")
        if self.labels not in ("chexpert", "negbio"):
            raise ValueError(f"data.labels must be chexpert or negbio, got {self.labels!r}")
        if self.source_options() and self.source != "mimic":
            raise ValueError(f"data.reports_root and data.labels are options of the mimic source, not {self.source!r}")


def run_stage(cfg: DataConfig, ctx: Any) -> dict[str, Any]:
    """The dataset root and the source that reads it, for every later stage (``ctx.data``)."""
    from kdistill.data.sources import open_source

    if cfg.source == "phantom":
        from kdistill.data.phantom.synth import synthesize

        # The run's seed shifts the phantom's, so `seed: 1` at the top of a run config gives new data.
        phantom = dataclasses.replace(cfg.phantom, seed=cfg.phantom.seed + int(getattr(ctx, "seed", 0) or 0))
        out = Path(ctx.stage_dir("data"))
        summary = synthesize(phantom, out)
        # the phantom is written in the MIMIC-CXR-JPG layout
        return {"root": str(out), "source": "mimic", "n_studies": summary["n_studies"],
                "prevalence": summary["prevalence"]}
    data = open_source(cfg.source, cfg.root, **cfg.source_options())
    data.check_root()  # `kdistill data check ROOT` checks the rest
    return {"root": str(data.root), "source": cfg.source, "has_reports": data.has_reports,
            "options": cfg.source_options()}
