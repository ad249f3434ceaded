"""Token sequences for the student's decoder, built with the teacher's tokenizer.

A sequence is ``[bos] + prefix + text + [eos]`` then padding. The task prefix ("<report>" or
"<rationale>") is plain text tokenised like the rest, so the student's vocabulary stays exactly the
teacher's (no added tokens). Only text and eos positions are predicted; bos, prefix and padding
carry label -100.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

IGNORE_INDEX = -100
# A sentence ends at ".", "!" or "?" (and any closing quotes or brackets) before whitespace or the
# end of the text, so "0.5" and "e.g.," do not end one. The pages' trimming uses the same rule.
SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


class TextTokens(list):
    """A text's token ids, and after how many of them each of its sentences ends
    (``sentence_ends``; None when the tokenizer gives no character offsets)."""

    def __init__(self, ids: Sequence[int], sentence_ends: Sequence[int] | None = None):
        super().__init__(ids)
        self.sentence_ends = tuple(sentence_ends) if sentence_ends is not None else None


def fit_to_budget(tokens: Sequence[int], budget: int) -> list[int]:
    """The tokens a target keeps within ``budget``: all of them when they fit; else up to the last
    sentence end that fits, so every target the student learns ends with a full sentence and then
    end-of-text (a target cut mid-sentence teaches it to stop mid-sentence); a text whose first
    sentence alone is longer, or without known sentence ends, is cut at the budget."""
    if len(tokens) <= budget:
        return list(tokens)
    ends = [k for k in (getattr(tokens, "sentence_ends", None) or ()) if 0 < k <= budget]
    return list(tokens)[: max(ends) if ends else budget]


class TokenSpec:
    """The ids the student needs from a tokenizer, and its prompt for each task."""

    def __init__(self, tokenizer, report_prefix: str, rationale_prefix: str, context_tokens: int = 0):
        self.tokenizer = tokenizer
        self.context_tokens = context_tokens  # rationale tokens a report is written after (0: none)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            self.eos_id = tokenizer.sep_token_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has neither an eos nor a sep token; the student needs one to end its texts")
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        start = [self.bos_id] if self.bos_id is not None else []
        self.prompts = {
            "report": start + _encode(tokenizer, report_prefix),
            "rationale": start + _encode(tokenizer, rationale_prefix),
        }
        if not all(self.prompts.values()):
            raise ValueError("a task prompt is empty: give the tokenizer a bos token or a non-empty prefix")
        self._report_prefix = _encode(tokenizer, report_prefix)

    @property
    def context_extra(self) -> int:
        """Positions a report written after a rationale context needs beyond its own budget."""
        if not self.context_tokens:
            return 0
        return len(self.report_prompt([])) - len(self.prompts["report"])

    def report_prompt(self, context: Sequence[int] | None) -> list[int]:
        """The prompt of a report: ``[bos] <report>``, or, explaining first, ``[bos] <rationale>``
        + exactly ``context_tokens`` rationale tokens (cut, or ended by eos and padded) + ``<report>``.
        The fixed width keeps every row's report at the same positions, in training and generation."""
        if context is None or not self.context_tokens:
            return list(self.prompts["report"])
        n = self.context_tokens
        fitted = (list(context)[:n] + [self.eos_id] + [self.pad_id] * n)[:n]
        return self.prompts["rationale"] + fitted + self._report_prefix

    def encode(self, texts: Sequence[str]) -> list[TextTokens]:
        """Texts -> token ids without special tokens, with their sentence ends (done once up front
        for a whole split)."""
        if not texts:
            return []
        texts = list(texts)
        if not getattr(self.tokenizer, "is_fast", False):  # no offsets: targets are cut at the budget
            return [TextTokens(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
            ends = {m.end() for m in SENTENCE_END.finditer(text)}
            out.append(TextTokens(ids, [k + 1 for k, (_, stop) in enumerate(offsets) if stop in ends]))
        return out

    def batch(self, task: str, token_lists: Sequence[Sequence[int] | None], max_len: int,
              contexts: Sequence[Sequence[int] | None] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``ids`` (B, L), ``labels`` (B, L) with -100 off-target, ``mask`` (B, L) real tokens.

        A ``None`` entry (no text for that row) gives a row whose labels are all -100. ``contexts``
        (reports only): per row, the rationale tokens the report is written after (see
        ``report_prompt``); the text keeps its own budget of ``max_len`` tokens, prompt included.
        """
        rows, labels = [], []
        longest_prompt = len(self.prompts[task])
        for i, tokens in enumerate(token_lists):
            budget = max(0, max_len - len(self.prompts[task]) - 1)
            prompt = self.report_prompt(contexts[i]) if contexts is not None and task == "report" else self.prompts[task]
            longest_prompt = max(longest_prompt, len(prompt))
            if tokens is None:
                seq, lab = list(prompt), [IGNORE_INDEX] * len(prompt)
            else:
                body = fit_to_budget(tokens, budget) + [self.eos_id]
                seq = prompt + body
                lab = [IGNORE_INDEX] * len(prompt) + body
            rows.append(seq)
            labels.append(lab)
        # At least one position after the longest prompt, even when no row has a text (a batch
        # whose rationales are all missing or inconsistent): the model reads the state at the last
        # prompt token from a teacher-forced pass over ids[:, :-1], which needs that position.
        width = max(max(len(r) for r in rows), longest_prompt + 1)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        lab_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (seq, lab) in enumerate(zip(rows, labels)):
            ids[i, : len(seq)] = torch.tensor(seq)
            lab_t[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(seq)] = True
        return {"ids": ids, "labels": lab_t, "mask": mask}

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def rationale_text(rationale: str, order: str = "as_written", marker: str = "Conclusion:") -> str:
    """The rationale the student learns to write. ``"as_written"``: the teacher's text unchanged.
    ``"conclusion_first"``: the closing summary (from the last ``marker`` to the end, e.g. "Conclusion:
    small left pleural effusion, support devices.") moved to the front, the argument after it, so a
    target cut at max_text_len keeps the rationale's label-dense part (as impression-first does for
    reports). A rationale without the marker, or that already starts with it, is unchanged."""
    if order == "as_written":
        return rationale
    if order != "conclusion_first":
        raise ValueError(f"unknown rationale order {order!r}")
    if not marker:
        return rationale
    at = rationale.rfind(marker)
    if at <= 0:
        return rationale
    return f"{rationale[at:].strip()} {rationale[:at].strip()}".strip()

