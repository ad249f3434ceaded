"""What ``kdistill data check`` reports: the issue kinds and their severity, the report (issues
and counts, as JSON) and its readable summary."""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

from kdistill.errors import DataError

ERROR, WARNING = "error", "warning"
SEVERITY = {  # kind -> severity
    "missing_file": ERROR, "bad_csv": ERROR, "malformed_row": ERROR, "bad_label": ERROR,
    "bad_id": ERROR, "duplicate_dicom": ERROR, "duplicate_study": ERROR, "no_split": ERROR, "bad_split": ERROR,
    "missing_image": ERROR, "corrupt_image": ERROR, "missing_report": ERROR, "bad_roi": ERROR,
    "roi_unknown_study": ERROR, "roi_unknown_image": ERROR, "roi_outside_image": ERROR, "missing_mask": ERROR,
    "study_without_images": ERROR, "mixed_split": ERROR, "bad_path": ERROR, "bad_box": ERROR,
    "unlabelled_study": WARNING, "labels_without_images": WARNING, "split_without_metadata": WARNING,
    "no_usable_section": WARNING, "size_mismatch": WARNING,
}


# A plain identifier: letters, digits, '.', '_' and '-', not starting with '.' or '-' (so no
# '..', no hidden names, no option-like names), no slashes, spaces or control characters.
PLAIN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def is_plain_id(value: str) -> bool:
    """Whether ``value`` is safe as one file or folder name (see ``PLAIN_ID``)."""
    return bool(PLAIN_ID.fullmatch(value)) and ".." not in value


@dataclasses.dataclass
class Issue:
    """One problem found: its severity (``SEVERITY[kind]``), kind, file and message."""
    severity: str
    kind: str
    path: str
    message: str


@dataclasses.dataclass
class CheckReport:
    """Every issue of one dataset, and its counts (studies, images, splits, views, label prevalence)."""
    root: str
    issues: list[Issue] = dataclasses.field(default_factory=list)
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == WARNING]

    def kinds(self) -> dict[str, int]:
        return dict(collections.Counter(i.kind for i in self.issues))

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "ok": not self.errors, "errors": len(self.errors), "warnings": len(self.warnings),
                "issue_counts": self.kinds(), "counts": self.counts,
                "issues": [dataclasses.asdict(i) for i in self.issues]}

    def add(self, kind: str, path: Any, message: str) -> None:
        self.issues.append(Issue(SEVERITY[kind], kind, str(path) if path is not None else "", message))

    def __call__(self, error: DataError, kind: str) -> None:
        # Duck-types SkipCounter, so the loaders' readers report into the check.
        self.add(kind, error.path, error.problem)


def format_report(report: CheckReport, max_per_kind: int = 10) -> str:
    """Readable summary: counts, prevalence, then the issues by kind and file."""
    c = report.counts
    lines = [f"dataset: {report.root}", f"  studies: {c.get('studies', 0)}   images: {c.get('images', 0)}   "
             f"labelled studies: {c.get('labelled_studies', 0)}"]
    for split, n in c.get("splits", {}).items():
        lines.append(f"  {split:<9} {n['studies']:>7} studies {n['images']:>7} images")
    if c.get("views"):
        lines.append("  views: " + ", ".join(f"{v}={n}" for v, n in sorted(c["views"].items())))
    if c.get("labelled_studies"):
        lines.append(f"  label prevalence (of {c['labelled_studies']} labelled studies): positive / uncertain / negative / blank")
        for name, p in c["label_prevalence"].items():
            lines.append(f"    {name:<27} {p['positive']:>6} {p['uncertain']:>6} {p['negative']:>6} {p['blank']:>6}")
    by_kind: dict[str, list[Issue]] = collections.defaultdict(list)
    for issue in report.issues:
        by_kind[issue.kind].append(issue)
    for severity in (ERROR, WARNING):
        kinds = [k for k, items in by_kind.items() if items[0].severity == severity]
        if not kinds:
            continue
        total = sum(len(by_kind[k]) for k in kinds)
        lines.append(f"{severity}s: {total}")
        for kind in sorted(kinds):
            items = by_kind[kind]
            lines.append(f"  {kind}: {len(items)}")
            for issue in items[:max_per_kind]:
                lines.append(f"    {issue.path}: {issue.message}")
            if len(items) > max_per_kind:
                lines.append(f"    ... and {len(items) - max_per_kind} more (all of them with --json)")
    lines.append("result: " + (f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
                               if report.issues else "no problems found"))
    return "\n".join(lines)
