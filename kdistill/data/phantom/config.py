"""``PhantomConfig``: every knob of the phantom generator."""
from __future__ import annotations

import dataclasses

from kdistill.labels import FINDINGS


@dataclasses.dataclass
class PhantomConfig:
    n_studies: int = 500
    seed: int = 0
    image_size: int = 256  # stored JPEG side, 64..1024
    # 0 = findings obvious, 1 = faint findings under heavy noise.  The default leaves headroom:
    # a pixel classifier does not separate the classes perfectly.
    difficulty: float = 0.5
    views: list[str] = dataclasses.field(default_factory=lambda: ["PA", "AP"])
    lateral_share: float = 0.0  # share of PA studies that also get a LATERAL image (MIMIC: most do)
    label_noise: float = 0.0  # share of visible findings the report omits (label blank)
    shortcut_finding: str | None = None  # a corner marker correlated with this finding, train split only
    shortcut_strength: float = 0.9  # P(marker | finding labelled 1) = s, P(marker | not) = 1 - s
    corpus_mb: float = 3.0  # size of corpus/corpus.jsonl; 0 = no corpus
    studies_per_subject: float = 2.0  # mean
    split_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])
    jpeg_quality: int = 92
    write_rois: bool = True
    workers: int = 1  # processes; output is identical for any number

    def validate(self) -> None:
        if self.n_studies < 1:
            raise ValueError("n_studies must be >= 1")
        if not 64 <= self.image_size <= 1024:
            raise ValueError("image_size must be between 64 and 1024")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError("difficulty must be in [0, 1]")
        if not self.views or set(self.views) - {"PA", "AP"}:
            raise ValueError("views must be a non-empty subset of ['PA', 'AP']")
        if not 0.0 <= self.lateral_share <= 1.0:
            raise ValueError("lateral_share must be in [0, 1]")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError("label_noise must be in [0, 1)")
        if self.shortcut_finding is not None and self.shortcut_finding not in FINDINGS:
            raise ValueError(f"shortcut_finding {self.shortcut_finding!r} is not one of {list(FINDINGS)}")
        if not 0.0 <= self.shortcut_strength <= 1.0:
            raise ValueError("shortcut_strength must be in [0, 1]")
        if self.corpus_mb < 0:
            raise ValueError("corpus_mb must be >= 0")
        if self.studies_per_subject < 1:
            raise ValueError("studies_per_subject must be >= 1")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError("split_fractions must be three non-negative numbers (train, validate, test)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
