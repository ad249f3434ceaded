"""What the saliency scores add to ``kdistill eval``: wall time with and without them.

    .venv/bin/python benchmarks/eval_saliency.py [--studies 60] [--size 128] [--model demo] \
        [--repeats 1] [--threads 1] [saliency.max_pairs=16 ...]

Builds a student checkpoint with the demo's model (``configs/demo.yaml`` student.model, the
``kdistill-vit-tiny`` tower at 128 px; ``--model tiny``: student.synthetic.TINY_MODEL at 32 px),
untrained (the time of the maps does not depend on what the weights learnt), and a prepared cache
(student.synthetic.make_prepared) whose test split has ``--studies`` studies with an expert region
per labelled-positive finding (tests/saliency_support.py). Then times ``kdistill eval --checkpoint
--prepared`` with ``saliency.enabled=false`` and with the saliency section as configured
(overrides after the flags), ``--repeats`` times each, and reports the medians, the extra
seconds, and the per-method seconds per map from metrics.json. Bootstrap 200, noise sigmas as the
default (0.01, 0.05, 0.1). Prints a table, writes benchmarks/results/eval_saliency.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _checkpoint(folder: Path, model: str, size: int) -> None:
    import numpy as np
    import torch

    import student
    from kdistill import config as cfglib
    from kdistill.labels import NUM_FINDINGS
    from kdistill.scoring import save_thresholds
    from student import checkpoint as ckpt
    from student.synthetic import TINY_MODEL, make_prepared, make_tokenizer

    torch.manual_seed(0)
    tok = make_tokenizer(make_prepared(8, 4, size=32))
    if model == "demo":
        spec = cfglib.read_yaml(ROOT / "configs" / "demo.yaml")["student"]["model"]
    else:
        spec = dict(TINY_MODEL)
    m = student.create_student(cfglib.from_dict(student.StudentConfig, spec), tok)
    if tuple(m.image_size) != (size, size):
        raise SystemExit(f"the {model} model takes {m.image_size} images; pass --size {m.image_size[0]}")
    ckpt.save_weights(m.cfg, m.state_dict(), folder)
    ckpt.save_tokenizer(tok, folder)
    save_thresholds(folder, np.full(NUM_FINDINGS, 0.5), chosen_on="validate", policy="prevalence", n_studies=4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60, help="test studies (the demo's test split has 60)")
    parser.add_argument("--size", type=int, default=128, help="image side (the model's input)")
    parser.add_argument("--model", choices=("demo", "tiny"), default="demo")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "eval_saliency.json")
    parser.add_argument("overrides", nargs="*", help="eval config overrides for the saliency run, e.g. saliency.max_pairs=8")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from eval import run as R
    from saliency_support import with_regions
    from student.synthetic import make_prepared

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _checkpoint(tmp / "student", args.model, args.size)
        with_regions(make_prepared(8, args.studies, size=args.size), args.size).save_to_disk(str(tmp / "prepared"))
        base = ["--checkpoint", str(tmp / "student"), "--prepared", str(tmp / "prepared"), "n_bootstrap=200"]
        times: dict[str, list[float]] = {"without": [], "with": []}
        metrics = {}
        for r in range(args.repeats):
            for kind, extra in (("without", ["saliency.enabled=false"]), ("with", list(args.overrides))):
                out = tmp / f"eval_{kind}_{r}"
                start = time.perf_counter()
                R.main([*base, "--out", str(out), *extra])
                times[kind].append(time.perf_counter() - start)
                print(f"[eval_saliency] {kind} saliency: {times[kind][-1]:.1f} s", file=sys.stderr, flush=True)
                if kind == "with":
                    metrics = json.loads((out / "metrics.json").read_text())
                    timing = json.loads((out / "timing.json").read_text())
    med = {k: statistics.median(v) for k, v in times.items()}
    top = {k: v for k, v in metrics.items() if k.startswith("test/saliency/") and k.count("/") == 3}
    per_map = {k.split("/")[2]: v for k, v in timing.items() if k.endswith("/seconds_per_map")}
    pairs = {k.split("/")[2]: (v, top[k + "_costly"]) for k, v in top.items() if k.endswith("/n_pairs")}
    result = {
        "command": "benchmarks/eval_saliency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "studies": args.studies, "size": args.size, "model": args.model, "repeats": args.repeats,
        "threads": args.threads, "overrides": args.overrides,
        "eval_seconds_without_saliency": med["without"], "eval_seconds_with_saliency": med["with"],
        "extra_seconds": med["with"] - med["without"], "all_seconds": times,
        "pairs_available": metrics.get("test/saliency/n_pairs_available"),
        "pairs_per_method": {k: {"localisation": v[0], "costly": v[1]} for k, v in pairs.items()},
        "seconds_per_map": per_map,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
    }
    print(f"\nkdistill eval, {args.studies} test studies at {args.size} px, {args.model} model, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print("| run | seconds |\n| --- | --- |")
    print(f"| without saliency | {med['without']:.1f} |\n| with saliency | {med['with']:.1f} |\n"
          f"| extra | {med['with'] - med['without']:.1f} |")
    print("\n| method | pairs (localisation / costly) | seconds per map |\n| --- | --- | --- |")
    for name, (n, c) in pairs.items():
        print(f"| {name} | {int(n)} / {int(c)} | {per_map.get(name, float('nan')):.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from kdistill.io import write_json

    write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
