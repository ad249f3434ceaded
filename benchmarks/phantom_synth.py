"""Phantom generator throughput: studies per second on one core at 256x256 (target >= 200),
split into its parts (plan, render, report, encode + write), plus other sizes and worker counts.

    OMP_NUM_THREADS=1 python benchmarks/phantom_synth.py [--n 1000] [--sizes 256 512] [--workers 1 2]
    OMP_NUM_THREADS=1 python benchmarks/phantom_synth.py --baseline /tmp/old_tree [--rounds 4]

Prints a table and writes benchmarks/results/phantom_synth.json.  ``--baseline TREE`` (a checkout
of another revision, e.g. ``git archive REV kdistill | tar -x -C TREE``) measures this tree and
TREE alternately in fresh processes, 256 px, one worker, and reports the ratio (this / baseline)
of each part: the way to check that a change to the generator did not slow it down on a machine
whose load drifts (writes benchmarks/results/phantom_synth_vs_baseline.json).  On a machine
loaded far beyond its cores even that swings by +-10%; counting instructions is then the
steadier check: ``valgrind --tool=callgrind python -c "<synthesize n studies>"`` for each tree,
minus the same run with none.  Each figure is the best of
``--repeat`` runs (the least disturbed by other processes).  "cpu/s" divides by the process's
CPU time, i.e. the rate of one core held exclusively, which is what the target is about on a
shared machine; "wall/s" is the elapsed rate.  Compare ratios, not absolute numbers across
machines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("PHANTOM_BENCH_TREE", str(REPO)))  # --baseline runs children on another tree

from kdistill.data.phantom import PhantomConfig, synthesize  # noqa: E402
from kdistill.data.phantom.knowledge import load_knowledge  # noqa: E402
from kdistill.data.phantom.render import render_study  # noqa: E402
from kdistill.data.phantom.report import write_report  # noqa: E402
from kdistill.data.phantom.sampler import plan_studies  # noqa: E402
from kdistill.data.phantom.synth import make_study  # noqa: E402
from kdistill.io import write_json  # noqa: E402

TARGET = 200.0


def _best(fn, repeat: int) -> tuple[float, float]:
    """(min wall seconds, min CPU seconds) of ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def _parts(n: int, size: int, out: Path, repeat: int) -> dict[str, float]:
    """CPU milliseconds per study for each part, on the same plans."""
    cfg = PhantomConfig(n_studies=n, seed=0, image_size=size, corpus_mb=0)
    know = load_knowledge()
    plan_studies(cfg, know)  # calibrates the sampler once per process (cached)
    plans = plan_studies(cfg, know)
    render_study(plans[0].findings, size=size, seed=0)  # warm the per-size grid cache

    def render():
        for p in plans:
            render_study(p.findings, view=p.view, size=size, difficulty=cfg.difficulty, seed=p.seed,
                         patient_seed=p.patient_seed, shortcut=p.shortcut)

    def report():
        for p in plans:
            write_report(p, know, np.random.default_rng([p.seed, 4]))

    runs = iter(range(10**6))

    def whole():
        target = out / f"run{next(runs)}"
        (target / "rois").mkdir(parents=True)
        for p in plans:
            make_study(p, cfg, target)

    _, t_plan = _best(lambda: plan_studies(cfg, know), repeat)
    _, t_render = _best(render, repeat)
    _, t_report = _best(report, repeat)
    _, t_all = _best(whole, repeat)
    return {
        "plan_ms": 1e3 * t_plan / n,
        "render_ms": 1e3 * t_render / n,
        "report_ms": 1e3 * t_report / n,
        "encode_write_ms": 1e3 * max(0.0, t_all - t_render - t_report) / n,
    }


def _end_to_end(n: int, size: int, workers: int, out: Path, repeat: int) -> dict[str, float]:
    cfg = PhantomConfig(n_studies=n, seed=0, image_size=size, corpus_mb=0, workers=workers)
    summary = {}
    runs = iter(range(10**6))

    def run():  # a fresh folder each time: clearing a previous tree is not the generator's cost
        summary.update(synthesize(cfg, out / f"run{next(runs)}"))

    wall, cpu = _best(run, repeat)
    return {"wall_s": wall, "studies_per_s": n / wall,
            # CPU time of this process only: meaningful for one worker.
            "cpu_s": cpu if workers == 1 else float("nan"),
            "studies_per_cpu_s": n / cpu if workers == 1 else float("nan"),
            "rois": summary["n_rois"]}


def _corpus(mb: float, out: Path) -> dict[str, float]:
    cfg = PhantomConfig(n_studies=1, seed=0, image_size=64, corpus_mb=mb)
    wall, _ = _best(lambda: synthesize(cfg, out), 1)
    return {"corpus_mb": mb, "wall_s": wall, "mb_per_s": mb / wall}


def _child(n: int, repeat: int, tmp: str | None) -> int:
    """One side of --baseline: parts and end-to-end rate of the tree on sys.path, as one JSON line."""
    with tempfile.TemporaryDirectory(dir=tmp) as t:
        row = {**_parts(n, 256, Path(t) / "parts", repeat), **_end_to_end(n, 256, 1, Path(t) / "e2e", repeat)}
    print(json.dumps(row))
    return 0


def _compare(baseline: str, name: str | None, n: int, rounds: int, repeat: int, tmp: str | None, out: str) -> int:
    import subprocess

    trees = {"this": str(REPO), "baseline": str(Path(baseline).resolve())}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for i in range(rounds):  # alternate (ABBA...), so both sides see the same drift in machine load
        for name, tree in (list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]):
            cmd = [sys.executable, __file__, "--child", "--n", str(n), "--repeat", str(repeat)] + (["--tmp", tmp] if tmp else [])
            res = subprocess.run(cmd, env={**os.environ, "PHANTOM_BENCH_TREE": tree}, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    keys = ("render_ms", "report_ms", "encode_write_ms", "cpu_s")
    best = {name: {k: min(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    ratio = {k: best["this"][k] / best["baseline"][k] for k in keys}
    print(f"{'':>10} " + " ".join(f"{k:>16}" for k in keys))
    for name in trees:
        print(f"{name:>10} " + " ".join(f"{best[name][k]:>16.3f}" for k in keys))
    print(f"{'ratio':>10} " + " ".join(f"{ratio[k]:>16.3f}" for k in keys))
    print(f"(best of {rounds} alternating rounds x {repeat} repeats, {n} studies at 256 px, one worker; "
          "ms: CPU ms per study; cpu_s: whole synth, corpus off; ratio: this / baseline)")
    result = {"benchmark": "phantom_synth_vs_baseline", "baseline": name or trees["baseline"], "n": n, "rounds": rounds,
              "repeat": repeat, "best": best, "ratio_this_over_baseline": ratio, "runs": runs,
              "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    write_json(Path(out), result)
    print(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="studies per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--corpus-mb", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    parser.add_argument("--tmp", default=None, help="folder for the generated datasets (default: system temp)")
    parser.add_argument("--out", default=None, help="JSON result (default benchmarks/results/phantom_synth[_vs_baseline].json)")
    parser.add_argument("--baseline", default=None, help="source tree of another revision to compare with (see above)")
    parser.add_argument("--baseline-name", default=None, help="what the baseline is (e.g. its git revision), for the JSON")
    parser.add_argument("--rounds", type=int, default=4, help="with --baseline: alternating rounds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.n, args.repeat, args.tmp)
    if args.baseline:
        return _compare(args.baseline, args.baseline_name, args.n, args.rounds, args.repeat, args.tmp,
                        args.out or "benchmarks/results/phantom_synth_vs_baseline.json")
    args.out = args.out or "benchmarks/results/phantom_synth.json"

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            n = max(50, args.n * 256 * 256 // (size * size))
            parts = _parts(n, size, tmp / f"parts{size}", args.repeat)
            for w in args.workers if size == 256 else [1]:
                e2e = _end_to_end(n, size, w, tmp / f"e2e{size}_{w}", args.repeat)
                rows.append({"size": size, "workers": w, "n": n, **parts, **e2e})
        corpus = _corpus(args.corpus_mb, tmp / "corpus")

    base = next(r for r in rows if r["size"] == 256 and r["workers"] == 1)
    header = (f"{'size':>5} {'workers':>7} {'n':>6} {'plan ms':>8} {'render ms':>9} {'report ms':>9} {'write ms':>8} "
              f"{'cpu/s':>8} {'wall/s':>8} {'x 1-core':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        r["wall_speedup_vs_256_1worker"] = r["studies_per_s"] / base["studies_per_s"]
        print(f"{r['size']:>5} {r['workers']:>7} {r['n']:>6} {r['plan_ms']:>8.3f} {r['render_ms']:>9.2f} {r['report_ms']:>9.2f} "
              f"{r['encode_write_ms']:>8.2f} {r['studies_per_cpu_s']:>8.0f} {r['studies_per_s']:>8.0f} "
              f"{r['wall_speedup_vs_256_1worker']:>8.2f}")
    print("(ms columns: CPU milliseconds per study; cpu/s: studies per CPU second of one core; "
          "wall/s: studies per elapsed second; x 1-core: wall rate over the 256 px one-worker row)")
    print(f"corpus: {corpus['corpus_mb']:.1f} MB in {corpus['wall_s']:.2f} s ({corpus['mb_per_s']:.1f} MB/s)")
    rate = base["studies_per_cpu_s"]
    ok = rate >= TARGET
    print(f"256x256, one core: {rate:.0f} studies per CPU second, {base['studies_per_s']:.0f} per wall second "
          f"(target >= {TARGET:.0f} per core): {'PASS' if ok else 'FAIL'}")
    result = {
        "benchmark": "phantom_synth",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "target_studies_per_s_256_1core": TARGET,
        "studies_per_cpu_s_256_1core": rate,
        "studies_per_wall_s_256_1core": base["studies_per_s"],
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "pass": ok,
        "rows": rows,
        "corpus": corpus,
    }
    out = Path(args.out)
    write_json(out, result)
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
