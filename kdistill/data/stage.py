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
        if self.source == "phantom" and self.root:
            raise ValueError("data.root is for source mimic/chexpert; the phantom is written into the run's data/ folder")


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
    # The index file the loaders start from (kdistill.data.mimic / kdistill.data.chexpert);
    # `kdistill data check ROOT` checks the rest.
    wanted = _INDEX_FILES[cfg.source]
    if not any((root / name).is_file() for name in wanted):
        raise DataError(root, f"not a {cfg.source} root: none of {', '.join(wanted)} found")
    return {"root": str(root)}


_INDEX_FILES = {
    "mimic": ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"),
    "chexpert": ("train.csv", "valid.csv", "test.csv"),
}
