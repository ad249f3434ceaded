"""Speed of the rule-based report labeler on one core.

Builds a few thousand realistic reports (FINDINGS + IMPRESSION) from the hand-written
sentences of tests/fixtures/labeler_sentences.yaml, labels them, and prints reports/s for
the plain labeler and for the labeler behind section extraction, each also as a ratio to
the 2,000 reports/s target.  ``--before DIR`` also times the labeler of another source tree
(``git archive c815593 kdistill | tar -x -C DIR``) on the same reports and core, in a child
process, so the ratio between the two comes from one run on a machine whose load varies.
Writes benchmarks/results/labeler_speed.json.

    .venv/bin/python benchmarks/labeler_speed.py [--reports 3000] [--repeats 3] [--before DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdistill.config import write_text_atomic  # noqa: E402
from kdistill.labeler import Labeler  # noqa: E402
from labeler_real import run_tree  # noqa: E402  (benchmarks/ is this script's folder)

TARGET = 2000.0  # reports per second on one core (issue 16)


def build_reports(n: int, seed: int = 0) -> list[str]:
    items = yaml.safe_load((ROOT / "tests" / "fixtures" / "labeler_sentences.yaml").read_text())
    sentences = [it["text"] for it in items if "\n" not in it["text"] and len(it["text"]) < 200]
    rng = random.Random(seed)
    reports = []
    for _ in range(n):
        findings = " ".join(rng.sample(sentences, rng.randint(4, 8)))
        impression = " ".join(rng.sample(sentences, rng.randint(1, 3)))
        reports.append(f"FINDINGS: {findings}\n\nIMPRESSION: {impression}")
    return reports


def best_rate(fn, reports, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(reports)
        best = min(best, time.perf_counter() - start)
    return len(reports) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=None, help="source tree of an older kdistill to time side by side")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "labeler_speed.json"))
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    start = time.perf_counter()
    labeler = Labeler()
    build_ms = (time.perf_counter() - start) * 1000
    reports = build_reports(args.reports)
    mean_chars = sum(map(len, reports)) / len(reports)
    mean_mentions = sum(len(labeler.mentions(r)) for r in reports[:300]) / 300

    from kdistill.data.sections import extract_sections

    def with_sections(texts):
        return labeler.label_reports([" ".join(p for p in extract_sections(t) if p) for t in texts])

    rows = [
        ("rules, whole report", best_rate(labeler.label_reports, reports, args.repeats)),
        *([("rules before, whole report", run_tree(Path(args.before), reports, args.repeats)[2])] if args.before else []),
        ("rules after section extraction", best_rate(with_sections, reports, args.repeats)),
    ]
    print(f"{len(reports)} reports, {mean_chars:.0f} characters and {mean_mentions:.1f} mentions on average; "
          f"Labeler() built in {build_ms:.0f} ms")
    print(f"{'variant':<34}{'reports/s':>12}{'x target':>10}")
    for name, rate in rows:
        print(f"{name:<34}{rate:>12.0f}{rate / TARGET:>10.2f}")
    rates = dict(rows)
    if args.before:
        print(f"rules / rules before: {rates['rules, whole report'] / rates['rules before, whole report']:.2f}x")
    result = {
        "reports": len(reports),
        "mean_chars": round(mean_chars, 1),
        "mean_mentions": round(mean_mentions, 2),
        "build_ms": round(build_ms, 1),
        "target_reports_per_s": TARGET,
        "variants": {name: {"reports_per_s": round(rate, 1), "ratio_to_target": round(rate / TARGET, 3)} for name, rate in rows},
        "load_average_1min": round(os.getloadavg()[0], 2),  # timings are only as good as the machine is idle
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "python benchmarks/labeler_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
