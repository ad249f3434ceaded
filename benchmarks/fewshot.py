"""Few-shot learning curves (``kdistill student fewshot``): guided (Grad-CAM Dice, EGxFSL) against
unguided (gcam_dice=0) prototypical training from the same code, same episodes, same seeds.

    .venv/bin/python benchmarks/fewshot.py [--studies 2000] [--steps 300] [--episodes 600] [--seeds 0 1 2]
    .venv/bin/python benchmarks/fewshot.py --source nih --root ../shared/realdata/nih_64 --size 64

Data: a phantom written and prepared in a temporary folder (--studies, --size), or a dataset root
of any ``kdistill.data.sources`` source (--source/--root; prepared to a temporary folder), or an
existing prepared cache (--prepared). Model: the tiny ViT of student.synthetic at --size. Each
seed trains once per method (on the base findings) and is evaluated on --episodes novel episodes
per (N, K); the table gives each seed's accuracy and interval and the mean over seeds. Writes
benchmarks/results/fewshot[_TAG].json.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _prepared(args, tmp: Path) -> Path:
    from kdistill.data.prepare import prepare

    if args.prepared:
        return Path(args.prepared)
    root = args.root
    if root is None:
        from kdistill.data.phantom import PhantomConfig, synthesize

        root = tmp / "phantom"
        synthesize(PhantomConfig(n_studies=args.studies, image_size=max(64, args.size), corpus_mb=0.0, seed=args.data_seed),
                   root)
    prepare(root, tmp / "prepared", size=args.size, workers=1, source=args.source)
    return tmp / "prepared"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=2000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--source", default="mimic")
    p.add_argument("--root", help="a dataset root instead of the phantom")
    p.add_argument("--prepared", help="an existing prepared cache")
    p.add_argument("--novel", nargs="+", default=["Atelectasis", "Cardiomegaly", "Pleural Effusion"])
    p.add_argument("--findings", nargs="+", help="the finding set (default: all but No Finding)")
    p.add_argument("--ways", nargs="+", type=int, default=[2, 3])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--weight", type=float, default=1.0, help="gcam_dice of the guided run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)

    import torch

    from kdistill.config import from_dict
    from student.fewshot import run
    from student.fewshot_config import FewShotConfig
    from student.synthetic import TINY_MODEL

    torch.set_num_threads(1)
    model = json.loads(json.dumps(TINY_MODEL))
    model["vision_overrides"]["image_size"] = args.size
    started = time.perf_counter()
    rows, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepared(args, Path(tmp))
        for seed in args.seeds:
            for method, weight in (("unguided", 0.0), ("guided", args.weight)):
                cfg = from_dict(FewShotConfig, {
                    "model": model, "novel": args.novel, "findings": args.findings, "ways": args.ways,
                    "shots": args.shots, "queries": args.queries, "gcam_dice": weight, "max_steps": args.steps,
                    "eval_episodes": args.episodes, "seed": seed, "num_threads": 1})
                out = run(cfg, None, prepared=str(prepared))
                runs.append({"method": method, "seed": seed, "training": out["training"],
                             "single_finding_studies": out["single_finding_studies"],
                             "studies_with_region": out["studies_with_region"]})
                for r in out["results"]:
                    rows.append({"method": method, "seed": seed, **r})
                print(f"seed {seed} {method}: {out['training']}", flush=True)
    wall = time.perf_counter() - started
    lines = ["| N-way | K-shot | method | accuracy per seed (95% interval) | mean over seeds |",
             "| --- | --- | --- | --- | --- |"]
    for n in args.ways:
        for k in args.shots:
            for method in ("unguided", "guided"):
                sel = [r for r in rows if r["ways"] == n and r["shots"] == k and r["method"] == method]
                per = "; ".join(f"s{r['seed']} {r['mean_accuracy']:.3f} ({r['low']:.3f}-{r['high']:.3f})" for r in sel)
                lines.append(f"| {n} | {k} | {method} | {per} | {np.mean([r['mean_accuracy'] for r in sel]):.3f} |")
    table = "\n".join(lines)
    print(table)
    print(f"wall {wall:.1f} s")
    result = {"args": vars(args), "model": model, "rows": rows, "runs": runs, "table": table, "wall_s": round(wall, 1),
              "torch_threads": 1, "python": platform.python_version(), "torch": torch.__version__}
    out_path = Path(__file__).parent / "results" / f"fewshot{'_' + args.tag if args.tag else ''}.json"
    from kdistill.io import write_json

    write_json(out_path, result)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
