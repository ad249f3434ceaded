"""The ``data`` pipeline stage: synthesise the phantom dataset, or point at the user's own
MIMIC-CXR-JPG / CheXpert root."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from kdistill.data.phantom.config import PhantomConfig
from kdistill.errors import DataError


@dataclasses.dataclass
class StageConfig:
    source: Literal["phantom", "mimic", "chexpert"] = "phantom"
    root: str | None = None  # the dataset root for real data; required unless phantom
    phantom: PhantomConfig = dataclasses.field(default_factory=PhantomConfig)

    def validate(self) -> None:
        if self.source != "phantom" and not self.root:
            raise ValueError(f"data.root is required when data.source is {self.source!r}")


def run_stage(cfg: StageConfig, ctx: Any) -> dict[str, Any]:
    if cfg.source == "phantom":
        from kdistill.data.phantom.synth import synthesize

        # The run's seed shifts the phantom's, so `seed: 1` at the top of a run config gives new data.
        phantom = dataclasses.replace(cfg.phantom, seed=cfg.phantom.seed + int(getattr(ctx, "seed", 0) or 0))
        out = Path(ctx.stage_dir("data"))
        summary = synthesize(phantom, out)
        return {"root": str(out), "n_studies": summary["n_studies"], "prevalence": summary["prevalence"]}
    root = Path(cfg.root).expanduser()  # type: ignore[arg-type]
    if not root.is_dir():
        raise DataError(root, f"data.root for source {cfg.source!r} does not exist or is not a folder")
    return {"root": str(root)}
