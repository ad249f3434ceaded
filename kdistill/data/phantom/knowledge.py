"""The findings knowledge file (``kdistill/data/findings.yaml``) and the report phrase banks
(``phrases.yaml``), loaded once and checked against ``kdistill.labels.FINDINGS``.

Renderer, report writer and corpus writer all read finding facts from here, so a name, a
laterality or a severity exists in exactly one place.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

from kdistill.errors import DataError
from kdistill.labels import FINDINGS

FINDINGS_FILE = Path(__file__).resolve().parent.parent / "findings.yaml"
PHRASES_FILE = Path(__file__).resolve().parent / "phrases.yaml"
SEVERITIES = ("small", "moderate", "large")
LATERALITIES = ("left", "right", "bilateral", "none")


@dataclasses.dataclass(frozen=True)
class FindingInfo:
    name: str
    slug: str
    names: tuple[str, ...]
    location: str
    signs: tuple[str, ...]
    severities: dict[str, float]
    severity_words: dict[str, tuple[str, ...]]
    lateralities: dict[str, float]
    causes: tuple[str, ...]
    differentials: tuple[str, ...]
    associated_text: str
    prevalence: float
    hedge_rate: float
    negate_rate: float
    associated: dict[str, float]
    signature: str = ""  # what the renderer draws
    render: dict[str, Any] = dataclasses.field(default_factory=dict)  # the renderer's numbers

    def param(self, key: str, severity: str | None = None) -> float:
        """A render number; a per-severity list [small, moderate, large] is indexed by ``severity``
        (moderate when ungraded)."""
        value = self.render[key]
        if isinstance(value, (list, tuple)):
            return float(value[{"small": 0, "moderate": 1, "large": 2}.get(severity or "moderate", 1)])
        return float(value)

    @property
    def canonical(self) -> str:
        """The recognisable clinical name used when a text must name this finding."""
        return self.names[0]


@dataclasses.dataclass(frozen=True)
class SyndromeInfo:
    """A cause a report may name in place of the findings it brings (findings.yaml ``syndromes:``)."""

    name: str
    brings: tuple[str, ...]
    requires: tuple[str, ...]
    needs: int
    explanation: str
    findings_phrases: tuple[str, ...]  # phrases.yaml: statements for the findings section
    impression_phrases: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # other names a report may give it ("CHF", "cardiac decompensation")


@dataclasses.dataclass(frozen=True)
class Knowledge:
    findings: dict[str, FindingInfo]
    sampling_order: tuple[str, ...]
    normal_share: float
    normal_device_logit: float
    phrases: dict[str, Any]
    syndromes: dict[str, SyndromeInfo] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> FindingInfo:
        return self.findings[name]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(path, f"cannot read knowledge file: {err}") from None
    if not isinstance(data, dict):
        raise DataError(path, "top level must be a mapping")
    return data


def _finding(name: str, raw: dict[str, Any], path: Path) -> FindingInfo:
    try:
        info = FindingInfo(
            name=name,
            slug=str(raw["slug"]),
            names=tuple(raw["names"]),
            location=str(raw["location"]),
            signs=tuple(raw["signs"]),
            severities={k: float(v) for k, v in (raw.get("severities") or {}).items()},
            severity_words={k: tuple(v) for k, v in (raw.get("severity_words") or {}).items()},
            lateralities={k: float(v) for k, v in raw["lateralities"].items()},
            causes=tuple(raw.get("causes") or ()),
            differentials=tuple(raw.get("differentials") or ()),
            associated_text=str(raw.get("associated_text", "")),
            prevalence=float(raw["prevalence"]),
            hedge_rate=float(raw.get("hedge_rate", 0.0)),
            negate_rate=float(raw.get("negate_rate", 0.0)),
            associated={k: float(v) for k, v in (raw.get("associated") or {}).items()},
            signature=str(raw.get("signature", "")),
            render=dict(raw.get("render") or {}),
        )
    except KeyError as err:
        raise DataError(path, f"finding {name!r} lacks key {err}") from None
    for key, value in info.render.items():
        if isinstance(value, (list, tuple)) and len(value) != 3:
            raise DataError(path, f"finding {name!r}: render.{key} must be one number or three (small, moderate, large)")
    bad = set(info.severities) - set(SEVERITIES)
    bad |= set(info.lateralities) - set(LATERALITIES)
    bad |= set(info.associated) - set(FINDINGS)
    if bad:
        raise DataError(path, f"finding {name!r}: unknown severity/laterality/association {sorted(bad)}")
    return info


def _syndromes(raw: Any, phrases: dict[str, Any], fpath: Path, ppath: Path) -> dict[str, SyndromeInfo]:
    if not isinstance(raw, dict):
        raise DataError(fpath, "syndromes must be a mapping of cause name -> {brings, requires, needs, explanation}")
    wording = phrases.get("syndromes") or {}
    out = {}
    for name, entry in raw.items():
        try:
            info = SyndromeInfo(
                name=str(name),
                brings=tuple(entry["brings"]),
                requires=tuple(entry.get("requires") or ()),
                needs=int(entry.get("needs", 1)),
                explanation=str(entry["explanation"]),
                findings_phrases=tuple((wording.get(name) or {}).get("findings") or ()),
                impression_phrases=tuple((wording.get(name) or {}).get("impression") or ()),
                aliases=tuple(str(a) for a in entry.get("aliases") or ()),
            )
        except (KeyError, TypeError) as err:
            raise DataError(fpath, f"syndrome {name!r}: missing or malformed key {err}") from None
        unknown = sorted(set(info.brings + info.requires) - set(FINDINGS))
        if unknown:
            raise DataError(fpath, f"syndrome {name!r}: unknown finding(s) {unknown}")
        if not 1 <= info.needs <= len(info.brings):
            raise DataError(fpath, f"syndrome {name!r}: needs must be between 1 and the number of findings it brings")
        if name not in wording:
            raise DataError(ppath, f"no wording for syndrome {name!r} (phrases.yaml syndromes:)")
        if bool(info.findings_phrases) != bool(info.impression_phrases) or (not info.findings_phrases and not info.requires):
            raise DataError(ppath, f"syndrome {name!r}: give findings and impression statements, or leave both "
                            "empty when a required finding's own statement names it")
        out[str(name)] = info
    return out


@functools.lru_cache(maxsize=4)
def load_knowledge(findings_file: str | None = None, phrases_file: str | None = None) -> Knowledge:
    fpath = Path(findings_file) if findings_file else FINDINGS_FILE
    ppath = Path(phrases_file) if phrases_file else PHRASES_FILE
    data = _read(fpath)
    raw = data.get("findings") or {}
    if tuple(raw) != FINDINGS and set(raw) != set(FINDINGS):
        missing = sorted(set(FINDINGS) - set(raw))
        extra = sorted(set(raw) - set(FINDINGS))
        raise DataError(fpath, f"findings must match kdistill.labels.FINDINGS; missing {missing}, unknown {extra}")
    findings = {name: _finding(name, raw[name], fpath) for name in FINDINGS}
    order = tuple(data.get("sampling_order") or ())
    expected = set(FINDINGS) - {"No Finding"}
    if set(order) != expected or len(order) != len(expected):
        raise DataError(fpath, "sampling_order must list every finding but 'No Finding' once")
    for i, name in enumerate(order):  # associations must point backwards (a DAG in draw order)
        later = set(findings[name].associated) - set(order[:i])
        if later:
            raise DataError(fpath, f"{name!r} is associated with {sorted(later)}, which are drawn after it")
    phrases = _read(ppath)
    missing = sorted(set(FINDINGS) - {"No Finding"} - set(phrases.get("findings") or {}))
    if missing:
        raise DataError(ppath, f"no phrase bank for {missing}")
    return Knowledge(
        findings=findings,
        sampling_order=order,
        normal_share=float(data.get("normal_share", 0.33)),
        normal_device_logit=float(data.get("normal_device_logit", -1.0)),
        phrases=phrases,
        syndromes=_syndromes(data.get("syndromes") or {}, phrases, fpath, ppath),
    )
