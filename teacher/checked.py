"""Checked generation: every rationale is labelled and compared with its study's labels; an
inconsistent one is regenerated with sampling up to ``max_retries`` times, then kept (the
first, greedy one) and flagged.

Retries are pooled: inconsistent rationales wait until ``batch_size`` of them (or the end of
the run) and are then regenerated together, several attempts of one prompt side by side when
the pool is small, so the decoder's slots stay full instead of decoding a handful of rows per
batch. Attempt ``a`` of a prompt always samples from the same seed (``row_seed``) and the kept
rationale is the lowest attempt the labeler accepts, so the result does not depend on how the
attempts were scheduled: a resumed run, or one with another batch size, writes the same rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

import numpy as np

from kdistill.labeler.consistency import LabelFn, implied_findings, is_consistent, is_consistent_implied
from teacher.backends import Generated

Unit = tuple[str, list[int]]  # (prompt, indices of the studies that share it)


def row_seed(seed: int, prompt: str, attempt: int) -> int:
    """A prompt's sampling seed: hangs on its text, not its position, so a resumed run samples alike."""
    return seed + int(hashlib.sha256(prompt.encode()).hexdigest()[:7], 16) + 7919 * attempt


def names_every_positive(rationale_labels: Sequence[float], study_labels: Sequence[float]) -> bool:
    """The rationale mentions (1 or -1) every finding the study has as positive; "No Finding" aside."""
    from kdistill.labels import FINDING_INDEX

    skip = FINDING_INDEX["No Finding"]
    return all(r in (1.0, -1.0) for i, (r, s) in enumerate(zip(rationale_labels, study_labels))
               if i != skip and s == 1.0)


@dataclasses.dataclass
class _Pending:
    unit: Unit
    first: Generated  # the greedy (or first sampled) output, kept when every retry fails
    next_attempt: int = 1


class CheckedGeneration:
    """Decodes units, checks them, retries the inconsistent ones, and hands finished rows to
    ``write`` (a list of row dicts per call: one shard)."""

    def __init__(self, studies: Sequence[Any], truncated: Sequence[bool], backend, label_fn: LabelFn, cfg,
                 row_fields: dict[str, Any], write: Callable[[list[dict[str, Any]]], None]):
        self.studies, self.truncated, self.backend, self.label_fn = studies, truncated, backend, label_fn
        self.cfg, self.row_fields, self.write = cfg, row_fields, write
        self.pool: list[_Pending] = []
        self._implied: dict[int, np.ndarray] = {}  # consistency "implied": study -> findings its report's causes bring

    def run(self, units: Sequence[Unit]) -> None:
        cfg = self.cfg
        first = self.backend.stream([p for p, _ in units], sample=cfg.do_sample,
                                    seeds=[row_seed(cfg.seed, p, 0) for p, _ in units], temperature=cfg.temperature)
        pending: list[tuple[Unit, Generated]] = []
        for j, out in first:
            pending.append((units[j], out))
            if len(pending) >= cfg.batch_size:
                self._settle(pending)
                pending = []
        self._settle(pending)
        self._retry_pool()

    def check(self, outputs: Sequence[Generated], units: Sequence[Unit]) -> list[bool]:
        """A prompt's rationale is good when it agrees with every study sharing the prompt:
        ``consistency: strict`` (``is_consistent``: every positive finding, no absent one),
        ``implied`` (strict, but findings that a cause stated in the study's report brings may be
        named: ``is_consistent_implied``) or ``positives`` (every positive finding; others allowed)."""
        if not outputs:
            return []
        labels = np.asarray(self.label_fn([g.text for g in outputs]))
        mode = getattr(self.cfg, "consistency", "strict")
        if mode == "implied":
            new = sorted({i for _, idxs in units for i in idxs} - self._implied.keys())  # each report read once
            self._implied.update(zip(new, implied_findings([self.studies[i].report for i in new])))
            return [all(is_consistent_implied(lab, self.studies[i].labels, self._implied[i]) for i in idxs)
                    for lab, (_, idxs) in zip(labels, units)]
        rule = is_consistent if mode == "strict" else names_every_positive
        return [all(rule(lab, self.studies[i].labels) for i in idxs) for lab, (_, idxs) in zip(labels, units)]

    def _settle(self, decoded: list[tuple[Unit, Generated]]) -> None:
        """Write the consistent rows of a decoded batch; pool the others for retries."""
        ok = self.check([g for _, g in decoded], [u for u, _ in decoded])
        done = []
        for (unit, out), good in zip(decoded, ok):
            if good or self.cfg.max_retries == 0:
                done.append((unit, out, good, 1))
            else:
                self.pool.append(_Pending(unit, out))
        self._emit(done)
        if len(self.pool) >= self.cfg.batch_size:
            self._retry_pool()

    def _retry_pool(self) -> None:
        """Regenerate the pooled units in rounds until each is accepted or out of attempts."""
        cfg = self.cfg
        while self.pool:
            # side-by-side attempts per unit: enough to fill about half the decoder's slots
            width = max(1, cfg.batch_size // (2 * len(self.pool)))
            requests = [(p, a) for p in self.pool
                        for a in range(p.next_attempt, min(p.next_attempt + width, cfg.max_retries + 1))]
            outs = self.backend.generate([p.unit[0] for p, _ in requests], sample=True,
                                         seeds=[row_seed(cfg.seed, p.unit[0], a) for p, a in requests],
                                         temperature=cfg.retry_temperature)
            ok = self.check(outs, [p.unit for p, _ in requests])
            accepted: dict[int, tuple[Generated, int]] = {}
            for (p, a), out, good in zip(requests, outs, ok):  # attempts in order: keep the lowest good one
                if good and id(p) not in accepted:
                    accepted[id(p)] = (out, a)
            done, left = [], []
            for p in self.pool:
                if id(p) in accepted:
                    out, a = accepted[id(p)]
                    done.append((p.unit, out, True, a + 1))
                else:
                    p.next_attempt += width
                    if p.next_attempt > cfg.max_retries:
                        done.append((p.unit, p.first, False, cfg.max_retries + 1))
                    else:
                        left.append(p)
            self.pool = left
            self._emit(done)

    def _emit(self, done: list[tuple[Unit, Generated, bool, int]]) -> None:
        """Rows for finished units (embedded where decoding did not, top-k when asked), written."""
        if not done:
            return
        outputs = [g for _, g, _, _ in done]
        prompts = [u[0] for u, _, _, _ in done]
        missing = [j for j, g in enumerate(outputs) if g.embedding is None]  # vllm, beams
        if missing:
            embedded = self.backend.embed([prompts[j] for j in missing], [outputs[j].ids for j in missing])
            for j, emb in zip(missing, embedded):
                outputs[j] = outputs[j]._replace(embedding=emb)
        k = self.cfg.topk
        topk = self.backend.token_topk(prompts, [g.text for g in outputs], k) if k else [None] * len(done)
        rows = []
        for ((prompt, idxs), _, good, tries), out, top in zip(done, outputs, topk):
            extra = {"topk_ids": top[0].tolist(), "topk_logprobs": top[1].tolist()} if top is not None else {}
            for i in idxs:
                rows.append({"study_id": self.studies[i].study_id, "prompt": prompt, "rationale": out.text,
                             **self.row_fields, "embedding": out.embedding.tolist(), "consistent": bool(good),
                             "tries": tries, "truncated": self.truncated[i], **extra})
        self.write(rows)
