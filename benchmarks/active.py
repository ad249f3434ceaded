"""Active-learning curves (``kdistill student active``) on the phantom: random, entropy,
misalignment and xgal at equal budgets, several seeds, the test micro-AUC per round.

    .venv/bin/python benchmarks/active.py [--studies 800] [--seeds 3] [--seed-size 20] [--acquire 20]
                                          [--budget 80] [--steps 60] [--strategies random entropy misalignment xgal]

The phantom is written and prepared (--size px) in a temporary folder; the model is the tiny ViT
of student.synthetic at --size. Every strategy starts from the same seed set for a seed (the seed
set depends on the seed only). Prints the table at every labelled count, the gap of each strategy
to random at equal budget (mean over seeds, with the seeds' sd), and writes
benchmarks/results/active[_TAG].json (+ the curve.png of the run next to it).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=800)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-size", type=int, default=20)
    p.add_argument("--acquire", type=int, default=20)
    p.add_argument("--budget", type=int, default=80)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warm-start", type=int, default=1)
    p.add_argument("--strategies", nargs="+", default=["random", "entropy", "misalignment", "xgal"])
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)

    import torch

    from kdistill.config import from_dict
    from kdistill.data.phantom import PhantomConfig, synthesize
    from kdistill.data.prepare import prepare
    from kdistill.io import write_json
    from student.active import METRIC, run
    from student.active_config import ActiveConfig
    from student.synthetic import TINY_MODEL

    torch.set_num_threads(1)
    model = json.loads(json.dumps(TINY_MODEL))
    model["vision_overrides"]["image_size"] = args.size
    started = time.perf_counter()
    results = Path(__file__).parent / "results"
    name = f"active{'_' + args.tag if args.tag else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(PhantomConfig(n_studies=args.studies, image_size=max(64, args.size), corpus_mb=0.0), tmp / "phantom")
        prepare(tmp / "phantom", tmp / "prepared", size=args.size, workers=1)
        cfg = from_dict(ActiveConfig, {
            "model": model, "strategies": args.strategies, "repeats": args.seeds, "seed_size": args.seed_size,
            "acquire": args.acquire, "budget": args.budget, "max_steps": args.steps, "warm_start": bool(args.warm_start),
            "num_threads": 1})
        out = run(cfg, tmp / "out", prepared=str(tmp / "prepared"))
        shutil.copyfile(tmp / "out" / "curve.png", results / f"{name}.png")
        pool = out["rows"]
    wall = time.perf_counter() - started
    gaps = []
    for n in sorted({r["labelled"] for r in pool}):
        base = {r["seed"]: r[METRIC] for r in pool if r["strategy"] == "random" and r["labelled"] == n}
        for strategy in args.strategies:
            if strategy == "random":
                continue
            d = [r[METRIC] - base[r["seed"]] for r in pool if r["strategy"] == strategy and r["labelled"] == n
                 and r["seed"] in base]
            if d:
                gaps.append({"labelled": n, "strategy": strategy, "gap_vs_random": float(np.mean(d)),
                             "sd": float(np.std(d, ddof=1)) if len(d) > 1 else 0.0,
                             "wins": int(sum(x > 0 for x in d)), "seeds": len(d)})
    gap_lines = ["| labelled | strategy | AUC gap vs random (mean over seeds) | sd | seeds better |",
                 "| --- | --- | --- | --- | --- |"]
    gap_lines += [f"| {g['labelled']} | {g['strategy']} | {g['gap_vs_random']:+.4f} | {g['sd']:.4f} | "
                  f"{g['wins']}/{g['seeds']} |" for g in gaps]
    print(out["table"])
    print("\n".join(gap_lines))
    print(f"wall {wall:.1f} s")
    write_json(results / f"{name}.json", {"args": vars(args), "model": model, "rows": pool, "summary": out["summary"],
                                         "gaps": gaps, "table": out["table"], "gap_table": "\n".join(gap_lines),
                                         "wall_s": round(wall, 1), "torch_threads": 1,
                                         "python": platform.python_version(), "torch": torch.__version__})
    print(f"wrote {results / (name + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
