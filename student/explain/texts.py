"""Generated texts as a reader sees them: never cut mid-sentence without saying so.

The student stops at end-of-text or at its token limit (``student.inference.predict``); a text
that hit the limit (or that was trained on targets cut at it) can end mid-sentence. Such a text
is trimmed back to its last full sentence and marked as cut; a text with no full sentence is
shown whole and marked. A sentence ends at ``.``, ``!`` or ``?`` (optionally followed by closing
quotes or brackets) before whitespace or the end, so "0.5" or "e.g.," do not end one.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from student.text import SENTENCE_END as _SENTENCE_END


@dataclasses.dataclass(frozen=True)
class ShownText:
    generated: str  # what the model wrote
    shown: str  # what the page shows: ``generated`` up to its last full sentence
    ended: bool  # the model's text ended with a full sentence

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def complete_sentences(text: str) -> ShownText:
    generated = (text or "").strip()
    if not generated:
        return ShownText(generated, "", False)
    ends = list(_SENTENCE_END.finditer(generated))
    if ends and ends[-1].end() == len(generated):
        return ShownText(generated, generated, True)
    shown = generated[: ends[-1].end()] if ends else generated
    return ShownText(generated, shown, False)


def ended_share(texts: Sequence[ShownText]) -> float | None:
    """Share of the written texts that ended with a full sentence (None when none was written, as
    by a student without text)."""
    written = [t for t in texts if t.generated]
    return sum(t.ended for t in written) / len(written) if written else None


def shared_counts(texts: Sequence[str]) -> list[int]:
    """For each text, how many *other* texts of the set are identical to it (empty texts: 0)."""
    counts: dict[str, int] = {}
    for t in texts:
        counts[t] = counts.get(t, 0) + 1
    return [counts[t] - 1 if t else 0 for t in texts]
