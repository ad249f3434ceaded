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


_LITERAL_FIRST = frozenset(";,&/'\"-")
_MAX_ALTERNATIVES = 64


def _group_end(src: str, i: int) -> int:
    """``src[i] == "("`` -> the index of its closing ")" (escapes and classes skipped), or -1."""
    depth, j, in_class = 0, i, False
    while j < len(src):
        c = src[j]
        if c == "\\":
            j += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def _split_alternatives(src: str) -> list[str]:
    """A regex source split at its top-level "|"."""
    parts, depth, j, start, in_class = [], 0, 0, 0, False
    while j < len(src):
        c = src[j]
        if c == "\\":
            j += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c in "()":
            depth += 1 if c == "(" else -1
        elif c == "|" and depth == 0:
            parts.append(src[start:j])
            start = j + 1
        j += 1
    return parts + [src[start:]]


def literal_first(src: str) -> list[tuple[str, str]] | None:
    """Regex source -> the same regex as ordered alternatives ``(first literal character,
    rest)``, or None when some match may start otherwise.  A leading ``(?:a|b)`` or
    ``(?:a|b)?`` group is distributed over what follows: ``(?:ng|og)[\\s-]+tube`` ->
    ``n`` + ``g[\\s-]+tube``, ``o`` + ``g[\\s-]+tube``, the order (and so the
    preference) of an alternation kept: ``(?:x)?y`` tries ``xy`` before ``y``, as the
    greedy ``?`` does."""
    if not src:
        return None
    c = src[0]
    if c == "\\":
        return [(src[:2], src[2:])] if len(src) > 1 and not src[1].isalnum() else None
    if c.isalnum() or c in _LITERAL_FIRST:
        return None if src[1:2] and src[1] in "?*+{" else [(c, src[1:])]
    if not src.startswith("(?:"):
        return None
    end = _group_end(src, 0)
    if end < 0:
        return None
    inner, after = src[3:end], src[end + 1:]
    optional = after[:1] == "?" and after[1:2] not in ("?", "+")
    if after[:1] in ("*", "+", "{") or (after[:1] == "?" and not optional):
        return None
    after = after[1:] if optional else after
    out: list[tuple[str, str]] = []
    for alternative in _split_alternatives(inner) + ([""] if optional else []):
        sub = literal_first(alternative + after)
        if sub is None:
            return None
        out += sub
    return out if len(out) <= _MAX_ALTERNATIVES else None


def _scan_source(cores: list[tuple[str, bool]]) -> str:
    """Phrase regexes (core, needs a left word boundary), in order of preference -> one scan
    regex grouped by first character: ``a(?<!\\w.)(?:telecta\\w*|...)|c(?<!\\w.)(?:...)``.
    Groups start with different characters, so at any position at most one can match and
    the order inside a group is the order of preference: the scan finds exactly what the
    plain alternation ``(?<!\\w)(?:A|B|...)`` finds.  Every alternative starting with a
    literal lets the regex engine skip positions by a character set, and test one group per
    position instead of every phrase.  When some phrase has no literal first character the
    plain alternation is the scan."""
    groups: dict[str, list[tuple[str, bool]]] = {}
    for core, left in cores:
        alternatives = literal_first(core)
        if alternatives is None:
            word_start = [c for c, lb in cores if lb]
            other = [f"(?:{c})" for c, lb in cores if not lb]
            plain = ([r"(?<!\w)(?:" + "|".join(word_start) + ")"] if word_start else []) + other
            return "|".join(plain) or r"(?!x)x"
        for first, rest in alternatives:
            groups.setdefault(first, []).append((rest, left))
    sources = []
    for first, rests in groups.items():
        if all(left for _, left in rests):  # one lookbehind for the group: no word before it
            sources.append(first + r"(?<!\w.)(?:" + "|".join(rest for rest, _ in rests) + ")")
        else:
            sources.append(first + "(?:" + "|".join((r"(?<!\w.)" if left else "") + rest for rest, left in rests) + ")")
    return "|".join(sources) or r"(?!x)x"


def phrase_to_regex(phrase: str) -> str:
    """One list entry -> a regex source matching it on word boundaries."""
    core, left = _phrase_parts(phrase)
    return (r"(?<!\w)" if left else "") + core


class PhraseSet:
    """Many tagged phrases scanned as one regex: leftmost match, longest phrase first.

    The scan regex carries no capture groups and is grouped by first character (see
    ``_scan_source``), so the regex engine tries one group per text position, not every
    phrase (named groups per phrase made it ten times slower).  ``tag`` finds which phrase matched, cached by text.

    ``gate``: a regex of the literal text every phrase starts with (a plain phrase's first
    word up to its ``*``, a regex's literal head), with no word boundary, so the engine's
    literal-prefix search applies; a text it finds nothing in holds no phrase and is not
    scanned at all (most reports mention no pneumothorax, fracture or consolidation).  None
    when some phrase has no literal head (``re:\\w*scolio\\w*``): every text is scanned.
    """

    def __init__(self, entries: list[tuple[str, str]], where: Path | str = "<phrases>"):
        parts = [(tag, phrase, *_phrase_parts(phrase)) for tag, phrase in entries]
        parts.sort(key=lambda p: -len(p[2]))
        self.scan = _compile(_scan_source([(core, left) for _, _, core, left in parts]), Path(where), "phrases")
        self._each = [(tag, _compile(phrase_to_regex(phrase), Path(where), repr(phrase))) for tag, phrase, _, _ in parts]
        self._cache: dict[tuple[str, str], str] = {}
        heads = [literal_heads(core) for _, _, core, _ in parts]
        self.gate = None
        if heads and all(heads):
            alternatives = sorted({h for hs in heads for h in hs}, key=lambda h: (-len(h), h))
            self.gate = _compile("|".join(map(re.escape, alternatives)), Path(where), "phrase heads")

    def finditer(self, low: str):
        """-> (start, end, tag) for each non-overlapping match."""
        if self.gate is not None and self.gate.search(low) is None:
            return
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


_MAX_HEADS = 64


def literal_heads(source: str) -> list[str] | None:
    """The literal texts one of which every match of regex ``source`` starts with, or None
    when a match may start with something else (a class, ``\\w*``, an optional part).  A
    necessary condition only: "enlarge(?:d|ment)" -> ["enlarge"], "(?:ng|og)[\\s-]+tube" ->
    ["ng", "og"]."""
    from re import _constants as C, _parser  # the stdlib's own parser: exact for any pattern

    def heads(ops) -> list[str] | None:
        prefix = []
        for op, arg in ops:
            if op is C.LITERAL:
                prefix.append(chr(arg))
                continue
            if op in (C.ASSERT, C.ASSERT_NOT, C.AT) and prefix:
                break  # a lookaround or boundary after the head adds nothing to it
            if op is C.SUBPATTERN and arg[3]:
                tails = heads(arg[3])
            elif op is C.BRANCH:
                tails = []
                for alternative in arg[1]:
                    sub = heads(alternative)
                    if sub is None:
                        tails = None
                        break
                    tails += sub
            elif op is C.IN and all(o is C.LITERAL for o, _ in arg):
                tails = [chr(a) for _, a in arg]
            else:
                tails = None
            if tails is None:
                break
            start = "".join(prefix)
            return [start + t for t in tails] if len(tails) <= _MAX_HEADS else ([start] if start else None)
        return ["".join(prefix)] if prefix else None

    try:
        found = heads(_parser.parse(source))
    except Exception:  # an unusual construct: no gate, the full scan decides
        return None
    return found if found and all(found) else None


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
