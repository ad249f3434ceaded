"""The rule-based labeler on real reports: IU / Open-i against NegBio's gold standard.

Data: ``../shared/realdata/iu_reports/dev.csv`` (1,537 Indiana University chest X-ray reports,
"FINDINGS: ... IMPRESSION: ..." with the collection's XXXX de-identification tokens; 8 CheXpert
columns filled from NegBio's OpenI gold: 1 = gold positive, 0 = not gold positive).  Scored per
finding (precision / recall / F1) and micro over the 8 mapped findings under two conventions:
*positive only* (prediction 1 is positive; -1, 0 and blank are not) and *uncertain as positive*
(1 and -1 are positive, f1chexbert's "rrg" mode).  The gold is MeSH-derived: it counts most
hedged findings ("borderline cardiomegaly", "may represent atelectasis") as positive and misses
some, so no labeler reaches 1.0; the labeler keeps CheXpert's convention (uncertain = -1).

Beside the labeler, measured in the same run on the same reports with the same mention lists:
* ``keyword``: every mention is positive (no negation, no hedges);
* ``negex``: a mention is negative when a negation word comes at most 5 words before it in
  its sentence (NegEx's pre-triggers), positive otherwise.
Both give No Finding = 1 when no finding other than Support Devices is positive.

Held-out part: every 5th report (index % 5 == 4) was never looked at while the rules were
developed; the table reports the develop part (4/5), the held-out part (1/5) and all, and a
bootstrap 95% interval (1,000 resamples of reports, seed 0) on the micro F1 of all.

Mistakes by category on the develop part (positive-only convention; counted by reading the
labeller's decisions and the sentence deciding each wrong finding), before -> after this
benchmark's rule changes:

    see RESULTS_ACCOUNT below (kept next to the code that measures it)

    python benchmarks/labeler_real.py [--data PATH] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdistill.io import write_json  # noqa: E402
from kdistill.labeler import Labeler  # noqa: E402
from kdistill.labeler.command import read_labels  # noqa: E402
from kdistill.labeler.lists import OTHER  # noqa: E402
from kdistill.labels import FINDING_INDEX, NUM_FINDINGS  # noqa: E402

DEFAULT_DATA = ROOT.parent.parent / "shared" / "realdata" / "iu_reports" / "dev.csv"
if not DEFAULT_DATA.exists():  # a checkout beside shared/ (CI) rather than under wt/
    DEFAULT_DATA = ROOT.parent / "shared" / "realdata" / "iu_reports" / "dev.csv"
MAPPED = ("No Finding", "Cardiomegaly", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
          "Pleural Effusion")
HELD_OUT_EVERY = 5  # index % 5 == 4 is held out
NEGEX_WINDOW = 5
NEGEX_TRIGGERS = re.compile(r"\b(?:no|not|without|negative\s+for|free\s+of|absence\s+of|no\s+evidence\s+of|"
                            r"rule\s+out|ruled\s+out|denies|never)\b")
_SENTENCE = re.compile(r"[^.!?\n]+")
_WORD = re.compile(r"\w+")


def held_out(n: int) -> np.ndarray:
    return np.arange(n) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


# ------------------------------------------------------------------ the two baselines
class KeywordBaseline:
    """The labeler's own mention lists with no negation or uncertainty: mention = positive.
    ``negex=True``: a NegEx pre-trigger at most NEGEX_WINDOW words before a mention negates it."""

    def __init__(self, labeler: Labeler, negex: bool = False):
        self.phrases = labeler.phrases
        self.negex = negex

    def _negated(self, low: str, start: int) -> bool:
        sentence_start = max(low.rfind(c, 0, start) for c in ".!?\n") + 1
        before = low[sentence_start:start]
        for m in NEGEX_TRIGGERS.finditer(before):
            if len(_WORD.findall(before, m.end())) <= NEGEX_WINDOW:
                return True
        return False

    def label_report(self, text: str) -> np.ndarray:
        low = text.lower()
        out = np.full(NUM_FINDINGS, np.nan, dtype=np.float32)
        abnormal = False
        for fp in self.phrases:
            unmentioned = [u.span() for u in fp.unmention.finditer(low)] if fp.unmention is not None else []
            for start, end, kind in fp.phrases.finditer(low):
                if kind not in ("mention", "uncertain") or any(s < end and start < e for s, e in unmentioned):
                    continue
                value = 0.0 if self.negex and self._negated(low, start) else 1.0
                if value == 1.0 and fp.finding != "Support Devices":
                    abnormal = True
                if fp.finding != OTHER:
                    j = FINDING_INDEX[fp.finding]
                    out[j] = value if np.isnan(out[j]) else max(out[j], value)
        out[FINDING_INDEX["No Finding"]] = np.nan if abnormal else 1.0
        return out

    def label_reports(self, texts) -> np.ndarray:
        return np.stack([self.label_report(t) for t in texts]) if len(texts) else np.zeros((0, NUM_FINDINGS), np.float32)


# ------------------------------------------------------------------ scoring
def counts(gold: np.ndarray, pred: np.ndarray, uncertain_positive: bool) -> np.ndarray:
    """-> (8, 3) true positives, false positives, false negatives per mapped finding."""
    cols = [FINDING_INDEX[f] for f in MAPPED]
    g = gold[:, cols] == 1.0
    p = pred[:, cols] == 1.0
    if uncertain_positive:
        p |= pred[:, cols] == -1.0
    return np.stack([(g & p).sum(0), (~g & p).sum(0), (g & ~p).sum(0)], axis=1)


def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def micro_f1(gold: np.ndarray, pred: np.ndarray, uncertain_positive: bool = False) -> float:
    return prf(*counts(gold, pred, uncertain_positive).sum(0))[2]


def bootstrap_interval(gold, pred, uncertain_positive, resamples=1000, seed=0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(gold)
    values = [micro_f1(gold[idx], pred[idx], uncertain_positive) for idx in (rng.integers(0, n, n) for _ in range(resamples))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def score(gold: np.ndarray, pred: np.ndarray) -> dict:
    parts = {"all": np.ones(len(gold), bool), "develop": ~held_out(len(gold)), "held_out": held_out(len(gold))}
    result = {}
    for convention, unc in (("positive_only", False), ("uncertain_as_positive", True)):
        per = counts(gold, pred, unc)
        entry = {"per_finding": {}, "micro": {}}
        for f, (tp, fp, fn) in zip(MAPPED, per):
            p, r, f1 = prf(tp, fp, fn)
            entry["per_finding"][f] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                                       "tp": int(tp), "fp": int(fp), "fn": int(fn)}
        for part, mask in parts.items():
            p, r, f1 = prf(*counts(gold[mask], pred[mask], unc).sum(0))
            entry["micro"][part] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                                    "reports": int(mask.sum())}
        low, high = bootstrap_interval(gold, pred, unc)
        entry["micro"]["all"]["f1_95ci"] = [round(low, 4), round(high, 4)]
        result[convention] = entry
    return result


def reports_per_second(fn, texts, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


# ------------------------------------------------------------------ table
def print_table(results: dict) -> None:
    names = list(results)
    for convention in ("positive_only", "uncertain_as_positive"):
        print(f"\n{convention.replace('_', ' ')}: precision / recall / F1 per finding (all {results[names[0]]['reports']} reports)")
        print(f"{'finding':<18}" + "".join(f"{n:>22}" for n in names))
        for f in MAPPED:
            cells = [results[n]["scores"][convention]["per_finding"][f] for n in names]
            print(f"{f:<18}" + "".join(f"{c['precision']:>8.3f}{c['recall']:>7.3f}{c['f1']:>7.3f}" for c in cells))
        for part in ("develop", "held_out", "all"):
            cells = [results[n]["scores"][convention]["micro"][part] for n in names]
            print(f"{'micro ' + part:<18}" + "".join(f"{c['precision']:>8.3f}{c['recall']:>7.3f}{c['f1']:>7.3f}" for c in cells))
        cis = [results[n]["scores"][convention]["micro"]["all"]["f1_95ci"] for n in names]
        print(f"{'  F1 95% CI':<18}" + "".join(f"{'[%.3f, %.3f]' % tuple(ci):>22}" for ci in cis))
    print(f"\n{'reports/s, 1 core':<18}" + "".join(f"{results[n]['reports_per_s']:>22.0f}" for n in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="IU dev CSV (Reports + 14 CheXpert columns)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "labeler_real.json"))
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    texts, gold = read_labels(args.data)
    labeler = Labeler()
    variants = {"rules": labeler, "keyword": KeywordBaseline(labeler), "negex": KeywordBaseline(labeler, negex=True)}
    results = {}
    for name, model in variants.items():
        pred = model.label_reports(texts)
        rate = reports_per_second(model.label_reports, texts, args.repeats)
        results[name] = {"reports": len(texts), "scores": score(gold, pred), "reports_per_s": round(rate, 1)}
    print_table(results)
    write_json(args.out, {
        "data": str(args.data),
        "findings": list(MAPPED),
        "held_out": f"index % {HELD_OUT_EVERY} == {HELD_OUT_EVERY - 1}",
        "variants": results,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "python benchmarks/labeler_real.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
