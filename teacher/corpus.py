"""The teacher corpus (``corpus/corpus.jsonl``): reading it and turning it into LM examples.

One JSON doc per line: ``{"kind": "textbook"|"rationale", "text": ..., "findings": [...],
"attributes": {finding: {"laterality": ..., "severity": ...}}}``. Rationale docs also become
prompt -> rationale pairs through the same template generation uses (``teacher.prompts``).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.errors import DataError
from kdistill.labels import FINDINGS
from teacher.prompts import doc_mentions, format_prompt

KINDS = ("textbook", "rationale")


@dataclass
class Example:
    """One LM example: ``prompt`` (no loss; may be empty) followed by ``target`` (loss)."""

    prompt: str
    target: str


def read_corpus(path: str | Path) -> list[dict[str, Any]]:
    """All docs of a corpus file; a DataError naming the file and line on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "corpus file not found (expected <data root>/corpus/corpus.jsonl)")
    docs = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}", f"not valid JSON: {err}") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                raise DataError(f"{path}:{lineno}", "a corpus line must be an object with a string 'text'")
            kind = doc.get("kind", "textbook")
            if kind not in KINDS:
                raise DataError(f"{path}:{lineno}", f"unknown kind {kind!r}; expected one of {KINDS}")
            unknown = [f for f in doc.get("findings") or [] if f not in FINDINGS]
            if unknown:
                raise DataError(f"{path}:{lineno}", f"unknown finding(s) {unknown}")
            if doc["text"].strip():
                docs.append(doc)
    if not docs:
        raise DataError(path, "corpus is empty: no document with text")
    return docs


def split_holdout(docs: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out); the held-out part is at least one doc when fraction > 0 and there are 2+."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(docs) * fraction))
    if fraction > 0 and len(docs) >= 2:
        n_eval = min(max(n_eval, 1), len(docs) - 1)
    held = set(order[:n_eval])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def pair_examples(docs: list[dict[str, Any]], seed: int, copies: int = 1) -> list[Example]:
    """Prompt -> rationale pairs from the rationale docs.

    Corpus docs have no report, so the pair's "Report:" is either empty or another doc's text:
    the teacher learns that the rationale follows the Findings line, not whatever the report
    says (at generation the report is real but the labels are what the rationale must match).
    """
    rng = random.Random(seed)
    rationales = [d for d in docs if d.get("kind") == "rationale"]
    out = []
    for _ in range(copies):
        for doc in rationales:
            report = "" if rng.random() < 0.5 or len(rationales) < 2 else rng.choice(rationales)["text"]
            # The target keeps its leading space: byte-level BPE then splits prompt and target
            # exactly as at generation, where the model continues right after "Rationale:".
            out.append(Example(format_prompt(doc_mentions(doc), report), " " + doc["text"].strip()))
    return out


def text_examples(docs: list[dict[str, Any]], kinds: tuple[str, ...] = KINDS) -> list[Example]:
    return [Example("", d["text"].strip()) for d in docs if d.get("kind", "textbook") in kinds]
