"""``kdistill explain`` speed: studies per second from a prepared cache, and where the time goes.

    .venv/bin/python benchmarks/explain_speed.py --checkpoint runs/demo/student --prepared runs/demo/prepared \
        [--studies 16] [--repeats 3] [--threads 1]

Runs ``student.explain.explain_prepared`` (model loaded once beforehand, as in one command after
its start-up) ``--repeats`` times into temp folders and reports the median studies/s, with the
share of the time spent in ``model.predict`` (greedy report + rationale generation and the maps)
and the rest (overlays, PNGs, pages). Also reports the share of generated reports and rationales
that end with a full sentence. Prints a table, writes benchmarks/results/explain_speed.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdistill.io import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    import student
    from student.explain import ExplainConfig, explain_prepared

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="student checkpoint folder")
    parser.add_argument("--prepared", type=Path, required=True, help="prepared cache")
    parser.add_argument("--split", default="test", help="split to explain")
    parser.add_argument("--studies", type=int, default=16, help="studies per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "explain_speed.json",
                        help="JSON to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = student.load(args.checkpoint)
    predict, spent = model.predict, []

    def timed_predict(*a, **k):
        t0 = time.perf_counter()
        out = predict(*a, **k)
        spent.append(time.perf_counter() - t0)
        return out

    model.predict = timed_predict
    student.load = lambda path: model  # explain_prepared's own load: the model loaded above
    cfg = ExplainConfig(split=args.split, max_studies=args.studies)
    runs = []
    for _ in range(args.repeats):
        spent.clear()
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            summary = explain_prepared(args.checkpoint, args.prepared, Path(out), cfg)
            wall = time.perf_counter() - t0
        runs.append({"wall_s": wall, "predict_s": sum(spent), "summary": summary})
    wall = statistics.median(r["wall_s"] for r in runs)
    pred = statistics.median(r["predict_s"] for r in runs)
    s = runs[-1]["summary"]
    result = {"studies": s["n_studies"], "repeats": args.repeats, "threads": args.threads,
              "studies_per_s": round(s["n_studies"] / wall, 3), "wall_s": round(wall, 3),
              "predict_share": round(pred / wall, 3), "reports_ended": s["reports_ended"],
              "rationales_ended": s["rationales_ended"], "distinct_reports": s["distinct_reports"],
              "distinct_rationales": s["distinct_rationales"], "load_average": os.getloadavg(),
              "cpus": os.cpu_count(), "machine": platform.platform(), "checkpoint": str(args.checkpoint)}
    print("| studies | studies/s | predict share | reports ended | rationales ended | load average |")
    print(f"| {result['studies']} | {result['studies_per_s']:.2f} | {result['predict_share']:.2f} | "
          f"{result['reports_ended']:.2f} | {result['rationales_ended']:.2f} | {result['load_average'][0]:.1f} |")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
