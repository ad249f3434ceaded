"""The rule-based CheXpert-style labeler: mentions, negation / uncertainty scope, aggregation.

The stages are those of stanfordmlgroup/chexpert-labeler (extract, classify, aggregate); the
classify stage there runs NegBio's patterns over a dependency parse.  Here the same
decisions come from surface scope rules, with no parser:

* the text is split into sentences, and sentences into clauses at "but", "however",
  "although", ";", ... (``patterns/scope.yaml``);
* a trigger reaches a mention only inside one clause, and only within its ``pre`` reach (the
  trigger comes first: "no ... effusion") or ``post`` reach (the trigger comes after:
  "heart size is normal"), counted in words; a trigger first with a reach of a few words
  (an adjective: "normal", "enlarged", "stable") stops at a comma ("heart size mildly
  enlarged for technique, stable mediastinal contours"), one reaching "all" does not ("no
  consolidation, effusion, or pneumothorax"), except into a comma item that opens with its own
  degree or course ("no pneumothorax, moderate right effusion", "possible pneumonia, small
  right pleural effusion": ``_PRESENCE_ITEM``); parentheses are clause breaks too;
* a trigger after the mention is a predicate, and reaches the mention when the mention is part
  of its subject: the text between them reads as a list of short noun phrases (split at commas,
  "and", "or", "/"), then at most the first verb and the trigger's ``post`` reach of words
  ("heart size, mediastinal contour, and pulmonary vascularity are within normal limits";
  "the cardiomediastinal contours, lungs, pleura and upper abdomen are normal").  A list item
  longer than four words ends the subject; the predicate starts at the first verb or trigger
  ("contour stable and within normal limits") and may hold neither a comma ("heart size
  mildly enlarged for technique, stable mediastinal contours": "stable" does not reach the
  heart) nor a second verb ("the heart is enlarged and the mediastinum is normal").  A comma list needs its "and"/"or" ("A, B and C are normal")
  except for heart / mediastinum structures, which reports list bare ("heart, mediastinum,
  hila are unremarkable");
* a mention's label follows CheXpert's order: pre-negation uncertainty ("cannot exclude",
  "no new") -> -1, else negation -> 0, else uncertainty -> -1, else 1.  A heart / mediastinum
  *structure* mention ("heart size", "the heart") states its finding only through a
  predicate: after the above, an abnormality trigger ("enlarged", "widened") -> 1, a
  stability trigger ("stable", "unchanged") -> -1 (CheXpert's rule), none -> no mention
  (where CheXpert would read the bare word as positive).

Aggregation is CheXpert's ``stages/aggregate.py``: per finding positive beats uncertain beats
negative (one deviation: CheXpert's code yields -1 when a finding has positive, uncertain
*and* negative mentions at once, an accident of its if-chain; here positive wins); a positive
or uncertain "heart failure"/"CHF" adds an uncertain Cardiomegaly; No Finding is 1 when no
mention other than Support Devices is positive or uncertain (findings outside the 14
columns, such as emphysema or scoliosis, count) and blank otherwise - never 0.
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from kdistill.labels import FINDING_INDEX, NUM_FINDINGS
from kdistill.labeler import lists
from kdistill.labeler.lists import ABNORMAL, NEGATION, OTHER, PRENEG_UNCERTAIN, STABILITY, UNCERTAIN

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n[ \t]*\n")
_COMMA = re.compile(r",")
_LAST_WORD = re.compile(r"[\w.]*$")
_NO_FINDING = FINDING_INDEX["No Finding"]
_SUPPORT_DEVICES = "Support Devices"
_CHF_TEXTS = ("chf", "heart failure")
_LISTED_KINDS = ("structure", "negated_only")  # listed bare before a shared predicate
# The verb that starts a predicate ("heart size and mediastinal contours ARE normal"); auxiliary
# sequences count as one verb ("appears be": dictation drops the "to").
_VERB = re.compile(
    r"\b(?:(?:has|have|had)\s+been|is\s+being|(?:appears?|appeared|seems?|seemed)\s+(?:to\s+)?be|"
    r"(?:is|are|was|were)\s+(?:again\s+|also\s+|now\s+|still\s+)?(?:noted|seen|thought|felt|believed|shown)\s+to\s+be|"
    r"is|are|was|were|be|been|has|have|had|appears?|appeared|remains?|remained|seems?|looks?|"
    r"measures?|shows?|demonstrates?)\b"
)
_LIST_SEPARATOR = re.compile(r",|/|&|\b(?:and|or|nor|as\s+well\s+as)\b")
_CONJUNCTION = re.compile(r"\b(?:and|or|nor)\b|&")
_ITEM_CONJUNCTION = re.compile(r",\s*(?:and|or|nor|and/or|as\s+well\s+as)\b")  # ", or pneumothorax": still the list
_MAX_ITEM_WORDS = 4  # a list item is a short noun phrase ("visualized upper abdomen")
# A comma item that opens with a degree or course states a finding of its own, out of the
# reach of a negation or hedge before the comma: "no pneumothorax, moderate right effusion",
# "possible pneumonia, small right pleural effusion".  ("large", "significant", "focal" stay
# inside negated lists: "no consolidation, pneumothorax, or large pleural effusion".)
_PRESENCE_ITEM = re.compile(
    r",\s*(?:(?:a|an)\s+)?(?:small|moderate|moderately|mild|mildly|minimal|minimally|trace|tiny|slight|slightly|"
    r"stable|unchanged|persistent|persisting|residual|increasing|increased|decreasing|decreased|improving|improved|"
    r"worsening|worsened|enlarging|resolving|moderate[\s-]+sized|small[\s-]+to[\s-]+moderate)\b"
)


@dataclass(frozen=True)
class Mention:
    """One mention of a finding and the decision taken on it."""

    finding: str  # a name from kdistill.labels.FINDINGS, or "Other"
    label: float  # 1 positive, 0 negative, -1 uncertain
    start: int  # character span in the labelled text
    end: int
    text: str
    kind: str  # mention / structure / uncertain / normal (see lists.py)
    trigger: str | None  # the trigger text that decided a 0 or -1, when there is one
    sentence: int  # index of the sentence in the text


@dataclass(frozen=True)
class _TriggerHit:
    kind: str
    start: int
    end: int
    pre: int | None
    post: int | None
    only: str | None
    post_only: str | None
    clause: int


class Labeler:
    """Compiled phrase and pattern lists.  Build once, then call ``label_reports``.

    ``phrases_dir`` / ``patterns_dir`` default to the lists shipped in the package; point
    them at edited copies to try other lists.
    """

    def __init__(self, phrases_dir: str | Path | None = None, patterns_dir: str | Path | None = None):
        self.phrases = lists.load_phrases(phrases_dir or lists.PHRASES_DIR)
        triggers = lists.load_triggers(patterns_dir or lists.PATTERNS_DIR)
        scope = lists.load_scope(patterns_dir or lists.PATTERNS_DIR)
        # One scan finds every trigger, clause break and pseudo-trigger; longest first, so
        # "no new" beats "no" and "no change in" (stability) hides the "no" inside it.
        entries: list[tuple[str, str]] = []
        self._trigger_info: dict[str, lists.Trigger] = {}
        for i, trig in enumerate(triggers):
            name = f"t{i}"
            self._trigger_info[name] = trig
            entries.append((name, trig.pattern))
        entries += [("cb", p) for p in scope.clause_breaks]
        entries += [("fb", p) for p in scope.forward_breaks]
        entries += [("ps", p) for p in scope.pseudo_triggers]
        self._scan = lists.PhraseSet(entries, patterns_dir or lists.PATTERNS_DIR)
        self._abbreviations = frozenset(scope.abbreviations)

    # ------------------------------------------------------------------ public API
    def mentions(self, text: str) -> list[Mention]:
        """Every mention in ``text`` with its label, span and deciding trigger, in text order."""
        if not isinstance(text, str):
            text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
        low = _lower(text)
        sentence_cuts = self._sentence_ends(low)
        cuts, forward_breaks, triggers = self._scan_triggers(low, sentence_cuts)
        commas = [m.start() for m in _COMMA.finditer(low)]
        starts = [hit.start for hit in triggers]  # ascending: hits come in scan order
        found: list[Mention] = []
        for phrases in self.phrases:
            unmentioned = None
            for start, end, kind in phrases.phrases.finditer(low):
                if phrases.unmention is not None:
                    if unmentioned is None:
                        unmentioned = [u.span() for u in phrases.unmention.finditer(low)]
                    if any(us < end and start < ue for us, ue in unmentioned):
                        continue
                label, trigger = self._classify(low, kind, start, end, cuts, forward_breaks, commas, triggers, starts)
                if label is None or (kind == "negated_only" and label != 0.0):
                    continue
                found.append(
                    Mention(
                        phrases.finding, label, start, end, text[start:end], kind, trigger,
                        bisect.bisect_right(sentence_cuts, start),
                    )
                )
        found.sort(key=lambda x: (x.start, x.end, x.finding))
        return found

    def label_report(self, text: str) -> np.ndarray:
        """One report -> (14,) float32: 1 / 0 / -1 / NaN in kdistill.labels.FINDINGS order."""
        return aggregate(self.mentions(text))

    def label_reports(self, texts: Iterable[str]) -> np.ndarray:
        """Reports -> (n, 14) float32."""
        rows = [self.label_report(t) for t in texts]
        if not rows:
            return np.zeros((0, NUM_FINDINGS), dtype=np.float32)
        return np.stack(rows).astype(np.float32)

    # ------------------------------------------------------------------ internals
    def _sentence_ends(self, low: str) -> list[int]:
        ends = []
        for m in _SENTENCE_END.finditer(low):
            ch = m.group()
            if ch == ".":
                word = _LAST_WORD.search(low, max(0, m.start() - 16), m.start()).group()
                if word in self._abbreviations:
                    continue
            elif ch == "?" and (m.start() == 0 or low[m.start() - 1].isspace()):
                continue  # "? pneumonia" hedges, it does not end a sentence
            ends.append(m.end())
        return ends

    def _scan_triggers(self, low: str, sentence_cuts: list[int]):
        clause_cuts = list(sentence_cuts)
        forward_breaks: list[int] = []
        raw: list[tuple[lists.Trigger, int, int]] = []
        for start, end, name in self._scan.finditer(low):
            if name == "cb":
                clause_cuts.append(start)
            elif name == "fb":
                forward_breaks.append(start)
            elif name != "ps":
                raw.append((self._trigger_info[name], start, end))
            # "ps": a pseudo-trigger only consumes its text
        clause_cuts.sort()
        hits = [
            _TriggerHit(t.kind, s, e, t.pre, t.post, t.only, t.post_only, bisect.bisect_right(clause_cuts, s)) for t, s, e in raw
        ]
        return clause_cuts, forward_breaks, hits

    def _classify(self, low, kind, start, end, cuts, forward_breaks, commas, triggers, starts):
        """-> (label, deciding trigger text); label None: a structure that states nothing."""
        if kind == "normal":
            return 0.0, None
        listed = kind in _LISTED_KINDS
        if not triggers:
            return (None if listed else -1.0 if kind == "uncertain" else 1.0), None
        clause = bisect.bisect_right(cuts, start)
        reached: dict[str, str] = {}
        for hit in triggers:
            if hit.clause != clause or hit.kind in reached:
                continue
            if hit.only is not None and not _kind_matches(hit.only, kind):
                continue
            if hit.start < start < hit.end <= end and hit.pre is not None:
                pass  # the trigger runs into the mention: "normal size of | size of the heart"
            elif hit.end <= start and hit.pre is not None:
                # trigger first: "no ... effusion"
                if _any_between(forward_breaks, hit.end, start):
                    continue
                if hit.pre < lists.ALL and (_words(low, hit.end, start) > hit.pre or (
                        _any_between(commas, hit.end, start) and not _noun_list_reaches(low, hit, start, cuts, clause))):
                    continue  # a near trigger (an adjective: "enlarged heart") stops at a comma
                if _any_between(commas, hit.end, start) and _new_comma_item(low, hit.end, _last_before(commas, start)):
                    continue  # "no pneumothorax, moderate right effusion", "no effusion or pneumothorax, heart enlarged"
            elif hit.start >= end and hit.post is not None:
                # mention first: "heart size is normal", "A, B and C are normal"
                if hit.post_only is not None and not _kind_matches(hit.post_only, kind):
                    continue
                if not _predicate_reaches(low, listed, end, hit, commas, starts):
                    continue
            else:
                continue
            reached[hit.kind] = low[hit.start: hit.end]
        if PRENEG_UNCERTAIN in reached:
            return -1.0, reached[PRENEG_UNCERTAIN]
        if NEGATION in reached:
            return 0.0, reached[NEGATION]
        if UNCERTAIN in reached:
            return -1.0, reached[UNCERTAIN]
        if kind == "uncertain":
            return -1.0, None
        if not listed:
            return 1.0, None
        if ABNORMAL in reached:
            return 1.0, reached[ABNORMAL]
        if STABILITY in reached:
            return -1.0, reached[STABILITY]
        return None, None


def _predicate_reaches(low: str, listed: bool, end: int, hit: _TriggerHit, commas: list[int], starts: list[int]) -> bool:
    """Does a trigger after a mention (ending at ``end``) read as the predicate of a subject the
    mention belongs to?  Subject: short list items up to the first verb or trigger; predicate:
    from there to the trigger, within the trigger's post reach (see the module docstring)."""
    verb = _VERB.search(low, end, hit.start)
    split = verb.start() if verb is not None else hit.start
    first_trigger = bisect.bisect_left(starts, end)
    if first_trigger < len(starts) and starts[first_trigger] < split:
        split = starts[first_trigger]  # "contour stable and within normal limits": one predicate
    if _any_between(commas, split, hit.start):
        return False  # "the heart is enlarged, normal mediastinum"
    verbs = _VERB.finditer(low, split, hit.start)
    if next(verbs, None) is not None and next(verbs, None) is not None:
        return False  # "the heart is enlarged and the mediastinum is normal"
    items = _LIST_SEPARATOR.split(low[end:split])
    if len(items) > 1:
        if not listed and _any_between(commas, end, split) and not _CONJUNCTION.search(low, end, split):
            return False  # "effusion, heart is normal": no list without its "and"
        if any(len(_WORD.findall(item)) > _MAX_ITEM_WORDS for item in items[:-1]):
            return False  # a long item is a clause, not a noun phrase
    return len(_WORD.findall(items[-1])) + _words(low, split, hit.start) <= hit.post


def aggregate(mentions: Sequence[Mention]) -> np.ndarray:
    """Mention decisions -> (14,) float32 labels, as CheXpert's aggregate stage."""
    per_finding: dict[int, set[float]] = {}
    no_finding = True
    for m in mentions:
        if m.finding != _SUPPORT_DEVICES and m.label in (1.0, -1.0):
            no_finding = False
        if m.finding == OTHER:
            continue
        per_finding.setdefault(FINDING_INDEX[m.finding], set()).add(m.label)
        if m.finding == "Edema" and m.label in (1.0, -1.0) and _normal_space(m.text.lower()) in _CHF_TEXTS:
            per_finding.setdefault(FINDING_INDEX["Cardiomegaly"], set()).add(-1.0)
    out = np.full(NUM_FINDINGS, np.nan, dtype=np.float32)
    for index, values in per_finding.items():
        out[index] = 1.0 if 1.0 in values else (-1.0 if -1.0 in values else 0.0)
    out[_NO_FINDING] = 1.0 if no_finding else np.nan
    return out


def _kind_matches(wanted: str, kind: str) -> bool:
    return kind == wanted or (wanted == "structure" and kind == "negated_only")


def _any_between(sorted_positions: list[int], a: int, b: int) -> bool:
    i = bisect.bisect_left(sorted_positions, a)
    return i < len(sorted_positions) and sorted_positions[i] < b


def _noun_list_reaches(low: str, hit: "_TriggerHit", start: int, cuts: list[int], clause: int) -> bool:
    """Does a near trigger before a list of noun phrases reach a later item of it ("normal heart
    size, mediastinal contour and pulmonary vascularity")?  The items up to the mention are
    short and hold no verb, the mention's own item puts at most the trigger's reach of words
    before it, and the list is closed by "and"/"or" in the clause ("heart size mildly enlarged
    for technique, stable mediastinal contours" is no list: "enlarged" stops at its comma)."""
    between = low[hit.end:start]
    items = _LIST_SEPARATOR.split(between)
    if any(len(_WORD.findall(item)) > _MAX_ITEM_WORDS for item in items) or _VERB.search(between):
        return False
    if len(_WORD.findall(items[-1])) > hit.pre or _PRESENCE_ITEM.match(low, _last_before_in(low, hit.end, start)):
        return False
    clause_end = cuts[clause] if clause < len(cuts) else len(low)
    return _CONJUNCTION.search(low, hit.end, clause_end) is not None


def _last_before_in(low: str, a: int, b: int) -> int:
    """The last comma in ``low[a:b]`` (there is one)."""
    return low.rindex(",", a, b)


def _new_comma_item(low: str, trigger_end: int, comma: int) -> bool:
    """Does the comma item at ``comma`` (the last comma before a mention) start a statement of
    its own rather than continue the list a trigger ending at ``trigger_end`` heads?  It does
    when it opens with its own degree or course (``_PRESENCE_ITEM``), or when the list was
    closed before the comma ("no pneumothorax or effusion, heart enlarged": "or" before the
    comma, no conjunction after it)."""
    if _PRESENCE_ITEM.match(low, comma):
        return True
    return _CONJUNCTION.search(low, trigger_end, comma) is not None and _ITEM_CONJUNCTION.match(low, comma) is None


def _last_before(sorted_positions: list[int], b: int) -> int:
    """The last position before ``b`` (there is one)."""
    return sorted_positions[bisect.bisect_left(sorted_positions, b) - 1]


def _words(low: str, a: int, b: int) -> int:
    return len(_WORD.findall(low, a, b)) if b > a else 0


def _normal_space(text: str) -> str:
    return " ".join(text.replace("-", " ").split())


def _lower(text: str) -> str:
    low = text.lower()
    if len(low) != len(text):  # a few non-ASCII letters change length when lower-cased
        low = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return low
