"""The teacher corpus (``corpus/corpus.jsonl``): reading it and turning it into LM examples.

One JSON doc per line: ``{"kind": "textbook"|"rationale", "text": ..., "findings": [...],
"attributes": {finding: {"laterality": ..., "severity": ...}}}``. Rationale docs also become
prompt -> rationale pairs through the same template generation uses (``teacher.prompts``).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kdistill.errors import DataError
from kdistill.labels import FINDINGS
from teacher.prompts import DEFAULT_MODE, doc_mentions, format_prompt

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


def pair_examples(docs: list[dict[str, Any]], seed: int, copies: int = 1,
                  reports: dict[frozenset, list[str]] | None = None, mode: str = DEFAULT_MODE) -> list[Example]:
    """Prompt -> rationale pairs from the rationale docs.

    Corpus docs have no report. When ``reports`` (``report_bank``: real train-split reports by
    their set of positive findings) has reports with the doc's exact finding set, a pair's
    "Report:" is one of them: the teacher learns to read real reports, which is what it sees at
    generation. Otherwise it is empty or a short one written from the doc's findings plus a few
    negated others (``pseudo_report``). On the phantom, the teacher trained on pseudo reports only
    wrote consistent rationales for 38% of real-report prompts vs 60% with the report left out.

    ``mode`` (``teacher.prompts.PROMPT_MODES``) is the prompt layout. In ``report`` mode the
    report is all the teacher reads, so a pair always has one (a pseudo report when the bank has
    none): a pair with no report would teach it to name findings nothing in the prompt states.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for doc in docs:
            if doc.get("kind") != "rationale":
                continue
            real = (reports or {}).get(_mention_key(doc_mentions(doc)))
            if real and rng.random() < 0.8:
                report = rng.choice(real)
            else:
                report = pseudo_report(doc, rng) if rng.random() < 0.7 or mode == "report" else ""
            # The target keeps its leading space: byte-level BPE then splits prompt and target
            # exactly as at generation, where the model continues right after "Rationale:".
            out.append(Example(format_prompt(doc_mentions(doc), report, mode), " " + doc["text"].strip()))
    return out


def _mention_key(mentions) -> frozenset:
    """(finding, uncertain) pairs: a doc and a report match when they state the same findings
    with the same certainty."""
    return frozenset((m.name, m.uncertain) for m in mentions)


def report_bank(studies: Sequence[Any]) -> dict[frozenset, list[str]]:
    """Reports of (train-split) studies keyed by their positive and uncertain findings."""
    bank: dict[frozenset, list[str]] = {}
    for study in studies:
        if not study.report.strip():
            continue
        labels = list(study.labels)
        key = frozenset((name, v == -1.0) for name, v in zip(FINDINGS, labels)
                        if v in (1.0, -1.0) and name != "No Finding")
        bank.setdefault(key, []).append(study.report)
    return bank


def load_report_bank(data) -> dict[frozenset, list[str]]:
    """``report_bank`` of a dataset's train split (``data``: a ``kdistill.data.sources.DataSource``);
    {} (pseudo reports only) when there is no dataset, it has no reports, or nothing loads."""
    import logging

    if data is None:
        return {}
    if not data.has_reports:
        logging.getLogger(__name__).info("source %s has no reports: teacher prompts use pseudo reports", data.name)
        return {}
    try:
        studies = data.load_studies(splits=["train"], on_error="skip")
    except Exception as err:  # the teacher can still learn from pseudo reports; say why
        logging.getLogger(__name__).warning("no train-split reports from %s for teacher prompts (%s); "
                                            "using pseudo reports only", data.root, err)
        return {}
    bank = report_bank(studies)
    logging.getLogger(__name__).info("report bank: %d train reports over %d finding sets",
                                     sum(len(v) for v in bank.values()), len(bank))
    return bank


def pseudo_report(doc: dict[str, Any], rng: random.Random | None = None) -> str:
    """A minimal report: the doc's findings with their attributes, then (given ``rng``) one to
    three negated findings it does not have."""
    attributes = doc.get("attributes") or {}
    sentences = []
    for name in doc.get("findings") or []:
        attr = attributes.get(name) or {}
        words = ["possible" if attr.get("uncertain") else None, attr.get("severity"), attr.get("laterality"),
                 name.lower()]
        sentences.append(" ".join(w for w in words if w).capitalize() + ".")
    if rng is not None:
        absent = [f for f in FINDINGS if f not in (doc.get("findings") or []) and f != "No Finding"]
        negated = [f"No {name.lower()}." for name in rng.sample(absent, min(len(absent), rng.randint(1, 3)))]
        sentences = sentences + negated
        rng.shuffle(sentences)
    body = " ".join(sentences) or "The lungs are clear."
    return f"FINDINGS: {body}"


def text_examples(docs: list[dict[str, Any]], kinds: tuple[str, ...] = KINDS) -> list[Example]:
    return [Example("", d["text"].strip()) for d in docs if d.get("kind", "textbook") in kinds]


def corpus_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def drop_inconsistent(docs: list[dict[str, Any]], label_fn, corpus_path: str | Path,
                      check_files: Sequence[Path] = (), write_to: Path | None = None) -> tuple[list, dict]:
    """Rationale docs whose own text the labeler reads differently from their ``findings``
    (e.g. a "causes include congestive heart failure" sentence read as Edema) are dropped, so the
    teacher does not learn to write rationales its checker will flag. Textbook docs stay.

    The verdicts are saved (``corpus_check.json``: corpus hash + dropped doc indices) and reused
    from any of ``check_files`` made for the same corpus, so pretrain and train label it once.
    Returns (kept docs, counts).
    """
    digest = corpus_digest(corpus_path)
    dropped: list[int] | None = None
    for path in check_files:
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("corpus_sha256") == digest and saved.get("n_docs") == len(docs):
                dropped = saved["dropped"]
                break
    if dropped is None:
        from kdistill.labels import FINDING_INDEX
        from kdistill.labeler.consistency import is_consistent

        idx = [i for i, d in enumerate(docs) if d.get("kind") == "rationale"]
        labels = label_fn([docs[i]["text"] for i in idx]) if idx else []
        dropped = []
        for i, lab in zip(idx, labels):
            truth = [math.nan] * len(FINDINGS)
            for name in docs[i].get("findings") or []:
                truth[FINDING_INDEX[name]] = 1.0
            if not is_consistent(lab, truth):
                dropped.append(i)
    if write_to is not None:
        from kdistill.config import write_text_atomic

        write_text_atomic(write_to, json.dumps({"corpus": str(corpus_path), "corpus_sha256": digest,
                                                "n_docs": len(docs), "dropped": dropped}) + "\n")
    gone = set(dropped)
    n_rationale = sum(d.get("kind") == "rationale" for d in docs)
    counts = {"rationale_docs": n_rationale, "dropped_inconsistent": len(gone)}
    return [d for i, d in enumerate(docs) if i not in gone], counts
