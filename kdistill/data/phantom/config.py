"""``PhantomConfig``: every knob of the phantom generator (``ReportStyle``: how reports word
the findings).  The defaults give the frozen default phantom (tests/test_phantom_digests.py)."""
from __future__ import annotations

import dataclasses

from kdistill.labels import FINDINGS

SPLITS = ("train", "validate", "test")


@dataclasses.dataclass
class ReportStyle:
    """Reports that name a cause or syndrome in place of the findings it implies (issue 18).

    ``implied_share``: of the studies whose findings make up a cause of findings.yaml
    (``causes:``; e.g. cardiomegaly + edema + effusion = congestive heart failure), the share
    whose report states the cause and leaves out some or all of the findings it implies.  0 is
    the default phantom (every finding named).  Above 0, ``mimic-cxr-2.0.0-chexpert.csv.gz``
    holds what the project's rule-based labeler reads in each report, so it misses the implied
    findings, and ``ground_truth.csv.gz`` keeps the complete labels.
    ``impression_only_share``: of those reports, the share that state the cause in the
    impression only (the findings section just leaves the implied findings out)."""

    implied_share: float = 0.0
    impression_only_share: float = 0.3

    @property
    def active(self) -> bool:
        return self.implied_share > 0.0

    def validate(self) -> None:
        if not 0.0 <= self.implied_share <= 1.0:
            raise ValueError("report_style.implied_share must be in [0, 1]")
        if not 0.0 <= self.impression_only_share <= 1.0:
            raise ValueError("report_style.impression_only_share must be in [0, 1]")


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
    # The shortcut: a corner marker whose chance depends on this finding (shortcut.jsonl says where).
    # Per split s = strength: P(marker | finding labelled 1) = s, P(marker | not) = 1 - s (0.1 reverses 0.9).
    shortcut_finding: str | None = None
    shortcut_strength: float = 0.9  # the train split's strength when shortcut_splits is unset
    shortcut_splits: dict[str, float] | None = None  # split -> strength, e.g. {train: 0.9, test: 0.1}; absent split: no marker
    corpus_mb: float = 3.0  # size of corpus/corpus.jsonl; 0 = no corpus
    studies_per_subject: float = 2.0  # mean
    split_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])
    jpeg_quality: int = 92
    write_rois: bool = True
    rois_fraction: float = 1.0  # share of TRAIN studies whose regions rois.jsonl keeps (validate/test: all)
    report_style: ReportStyle = dataclasses.field(default_factory=ReportStyle)
    workers: int = 1  # processes; output is identical for any number

    def shortcut_strengths(self) -> dict[str, float]:
        """Split -> marker strength; empty without a shortcut finding."""
        if self.shortcut_finding is None:
            return {}
        if self.shortcut_splits is None:
            return {"train": self.shortcut_strength}
        return dict(self.shortcut_splits)

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
        self._validate_shortcut()
        if self.corpus_mb < 0:
            raise ValueError("corpus_mb must be >= 0")
        if self.studies_per_subject < 1:
            raise ValueError("studies_per_subject must be >= 1")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError("split_fractions must be three non-negative numbers (train, validate, test)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if not 0.0 <= self.rois_fraction <= 1.0:
            raise ValueError("rois_fraction must be in [0, 1]")
        self.report_style.validate()
        if self.workers < 1:
            raise ValueError("workers must be >= 1")

    def _validate_shortcut(self) -> None:
        if self.shortcut_finding is not None and self.shortcut_finding not in FINDINGS:
            raise ValueError(f"shortcut_finding {self.shortcut_finding!r} is not one of {list(FINDINGS)}")
        if not 0.0 <= self.shortcut_strength <= 1.0:
            raise ValueError("shortcut_strength must be in [0, 1]")
        if self.shortcut_splits is None:
            return
        if self.shortcut_finding is None:
            raise ValueError("shortcut_splits needs shortcut_finding (the finding the marker follows)")
        unknown = sorted(set(self.shortcut_splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"shortcut_splits: unknown split(s) {unknown}; splits are {list(SPLITS)}")
        bad = {k: v for k, v in self.shortcut_splits.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"shortcut_splits: strengths must be in [0, 1], got {bad}")
