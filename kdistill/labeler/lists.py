"""Load the labeler's phrase and pattern lists (YAML data files) and compile them to regexes.

Phrase syntax, shared by every list:

* a plain phrase is lower-case words; a space matches any run of spaces or hyphens
  ("air space" matches "air-space"); a word ending in ``*`` matches any continuation
  ("opaci*" matches opacity, opacities, opacification);
* ``re:`` starts a raw Python regular expression, for phrases words cannot express;
* every phrase matches on word boundaries only ("mass" does not match "massive").

Phrase files (``phrases/*.yaml``), one per finding: ``finding`` (a name from
``kdistill.labels.FINDINGS``, or ``Other`` for findings without a column that still make a
study abnormal), and lists by kind - ``mention`` (states the finding), ``structure`` (names
the heart / mediastinum as a structure: stability makes it uncertain), ``uncertain`` (always
uncertain unless negated), ``normal`` (a statement that reports the finding absent),
``negated_only`` (a structure that speaks to the finding only when reported normal: "normal
cardiomediastinal silhouette" rules out cardiomegaly, "enlarged cardiomediastinal silhouette"
does not rule it in) - plus ``unmention`` (text that must not count as a mention even though
a mention matches inside).  A ``structure`` states its finding only through a predicate: an
abnormality trigger ("the heart is enlarged") makes it positive, a normality trigger negative,
a stability trigger uncertain; a structure with none ("the heart and lungs have XXXX XXXX")
states nothing and is no mention.

Pattern files (``patterns/*.yaml``): trigger lists with ``pre``/``post`` reach (and an
optional ``only`` / ``post_only: <mention kind>`` restricting what a trigger reaches), and
``scope.yaml`` (clause breaks, pseudo-triggers, abbreviations).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdistill.errors import DataError
from kdistill.labels import FINDINGS

PACKAGE_DIR = Path(__file__).resolve().parent
PHRASES_DIR = PACKAGE_DIR / "phrases"
PATTERNS_DIR = PACKAGE_DIR / "patterns"

OTHER = "Other"
MENTION_KINDS = ("mention", "structure", "uncertain", "normal", "negated_only")
# Trigger kinds in the order a mention's label is decided (CheXpert's classify stage:
# pre-negation uncertainty, then negation, then post-negation uncertainty).
PRENEG_UNCERTAIN, NEGATION, UNCERTAIN, STABILITY, PSEUDO = "preneg_uncertain", "negation", "uncertain", "stability", "pseudo"
ABNORMAL = "abnormal"  # "enlarged", "widened": what makes a heart / mediastinum structure positive
TRIGGER_FILES = {
    PRENEG_UNCERTAIN: "pre_negation_uncertainty.yaml",
    NEGATION: "negation.yaml",
    UNCERTAIN: "uncertainty.yaml",
    STABILITY: "stability.yaml",
    ABNORMAL: "abnormal.yaml",
}
ALL = 10_000  # "all": reach to the end of the clause


@dataclass(frozen=True)
class Trigger:
    kind: str
    pattern: str
    pre: int | None  # max words between trigger end and mention start (trigger first)
    post: int | None  # max words between mention end and trigger start (mention first)
    only: str | None = None  # reaches only mentions of this kind (e.g. "structure")
    post_only: str | None = None  # as `only`, for the post direction alone


@dataclass(frozen=True)
class FindingPhrases:
    finding: str
    phrases: "PhraseSet"  # tags are mention kinds
    unmention: re.Pattern | None
    source: str


def _phrase_parts(phrase: str) -> tuple[str, bool]:
    """One list entry -> (regex source with its right word boundary, needs a left boundary)."""
    phrase = phrase.strip()
    if phrase.startswith("re:"):
        return rf"(?:{phrase[3:].strip()})(?!\w)", True
    parts = []
    for word in phrase.lower().split():
        parts.append(re.escape(word[:-1]) + r"\w*" if word.endswith("*") else re.escape(word))
    body = r"[\s\-]+".join(parts)
    right = r"(?!\w)" if (phrase[-1].isalnum() or phrase.endswith("*")) else ""
    return body + right, phrase[0].isalnum()


def phrase_to_regex(phrase: str) -> str:
    """One list entry -> a regex source matching it on word boundaries."""
    core, left = _phrase_parts(phrase)
    return (r"(?<!\w)" if left else "") + core


class PhraseSet:
    """Many tagged phrases scanned as one regex: leftmost match, longest phrase first.

    The scan regex carries no capture groups and factors the left word boundary out, so the
    regex engine's fast first-character checks apply to every branch (named groups per
    phrase made it ten times slower).  ``tag`` finds which phrase matched, cached by text.
    """

    def __init__(self, entries: list[tuple[str, str]], where: Path | str = "<phrases>"):
        parts = [(tag, phrase, *_phrase_parts(phrase)) for tag, phrase in entries]
        parts.sort(key=lambda p: -len(p[2]))
        word_start = [core for _, _, core, left in parts if left]
        other = [f"(?:{core})" for _, _, core, left in parts if not left]
        sources = ([r"(?<!\w)(?:" + "|".join(word_start) + ")"] if word_start else []) + other
        self.scan = _compile("|".join(sources) or r"(?!x)x", Path(where), "phrases")
        self._each = [(tag, _compile(phrase_to_regex(phrase), Path(where), repr(phrase))) for tag, phrase, _, _ in parts]
        self._cache: dict[tuple[str, str], str] = {}

    def finditer(self, low: str):
        """-> (start, end, tag) for each non-overlapping match."""
        for m in self.scan.finditer(low):
            start, end = m.span()
            yield start, end, self.tag(low, start, end)

    def tag(self, low: str, start: int, end: int) -> str:
        # The text after the match is part of the key: a phrase may end in a lookahead
        # ("and" before "there" ends a clause, "and" before "the" only a forward scope).
        key = (low[start:end], low[end: end + 12])
        tag = self._cache.get(key)
        if tag is None:
            for tag, rx in self._each:
                m = rx.match(low, start)
                if m is not None and m.end() == end:
                    break
            else:
                raise RuntimeError(f"no single phrase matches {low[start:end]!r}")  # cannot happen
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[key] = tag
        return tag


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise DataError(path, "labeler list file not found") from None
    except yaml.YAMLError as err:
        raise DataError(path, f"not valid YAML: {err}") from None


def _compile(source: str, path: Path, what: str) -> re.Pattern:
    try:
        return re.compile(source)
    except re.error as err:
        raise DataError(path, f"bad pattern in {what}: {err}") from None


def load_phrases(phrases_dir: str | Path = PHRASES_DIR) -> list[FindingPhrases]:
    """Every ``*.yaml`` in ``phrases_dir`` -> compiled per-finding mention regexes."""
    phrases_dir = Path(phrases_dir)
    files = sorted(phrases_dir.glob("*.yaml"))
    if not files:
        raise DataError(phrases_dir, "no phrase files (*.yaml) found")
    out: list[FindingPhrases] = []
    seen: set[str] = set()
    for path in files:
        data = _read_yaml(path) or {}
        finding = data.get("finding")
        if finding not in FINDINGS and finding != OTHER:
            raise DataError(path, f"'finding' must be one of {list(FINDINGS)} or {OTHER!r}, got {finding!r}")
        if finding in seen:
            raise DataError(path, f"finding {finding!r} has two phrase files")
        seen.add(finding)
        unknown = set(data) - {"finding", "unmention", *MENTION_KINDS}
        if unknown:
            raise DataError(path, f"unknown keys {sorted(unknown)}")
        entries = [(kind, str(phrase)) for kind in MENTION_KINDS for phrase in data.get(kind) or []]
        if not entries:
            raise DataError(path, "no mention phrases")
        phrase_set = PhraseSet(entries, path)
        unmentions = [("unmention", str(p)) for p in data.get("unmention") or []]
        unmention = PhraseSet(unmentions, path).scan if unmentions else None
        out.append(FindingPhrases(finding, phrase_set, unmention, str(path)))
    return out


def _reach(value: Any, path: Path, pattern: str) -> int | None:
    if value is None:
        return None
    if value == "all":
        return ALL
    if isinstance(value, int) and value >= 0:
        return value
    raise DataError(path, f"trigger {pattern!r}: reach must be a word count or 'all', got {value!r}")


def load_triggers(patterns_dir: str | Path = PATTERNS_DIR) -> list[Trigger]:
    patterns_dir = Path(patterns_dir)
    triggers: list[Trigger] = []
    for kind, name in TRIGGER_FILES.items():
        path = patterns_dir / name
        data = _read_yaml(path) or {}
        for entry in data.get("triggers") or []:
            if not isinstance(entry, dict) or "pattern" not in entry:
                raise DataError(path, f"trigger entries need a 'pattern', got {entry!r}")
            pattern = str(entry["pattern"])
            pre, post = _reach(entry.get("pre"), path, pattern), _reach(entry.get("post"), path, pattern)
            if pre is None and post is None:
                raise DataError(path, f"trigger {pattern!r} has neither 'pre' nor 'post' reach")
            only, post_only = entry.get("only"), entry.get("post_only")
            for key, value in (("only", only), ("post_only", post_only)):
                if value is not None and value not in MENTION_KINDS:
                    raise DataError(path, f"trigger {pattern!r}: {key!r} must be one of {list(MENTION_KINDS)}, got {value!r}")
            unknown = set(entry) - {"pattern", "pre", "post", "only", "post_only"}
            if unknown:
                raise DataError(path, f"trigger {pattern!r}: unknown keys {sorted(unknown)}")
            triggers.append(Trigger(kind, pattern, pre, post, only, post_only))
    return triggers


@dataclass(frozen=True)
class Scope:
    clause_breaks: list[str]
    forward_breaks: list[str]
    pseudo_triggers: list[str]
    abbreviations: list[str]


def load_scope(patterns_dir: str | Path = PATTERNS_DIR) -> Scope:
    path = Path(patterns_dir) / "scope.yaml"
    data = _read_yaml(path) or {}
    return Scope(
        [str(p) for p in data.get("clause_breaks") or []],
        [str(p) for p in data.get("forward_breaks") or []],
        [str(p) for p in data.get("pseudo_triggers") or []],
        [str(p).lower() for p in data.get("abbreviations") or []],
    )
