"""The demo's teacher end to end: pretrain + LoRA + generate on a phantom, timed, with the
share of consistent rationales.

Runs the three teacher stages with the ``teacher_pretrain`` / ``teacher_train`` /
``teacher_generate`` sections of a run config (default ``configs/demo.yaml``) and ``key=value``
overrides (``teacher_pretrain.max_steps=400``), on the phantom of a finished run (``--run``: its
``data/``) or any ``--data-root``, writing into a temporary folder (or ``--out``). Wall and CPU
seconds per stage: on a shared machine CPU seconds are the steadier figure.

    python benchmarks/teacher_demo.py --run runs/demo [--threads 2] [key=value ...]

Prints a table and writes benchmarks/results/teacher_demo.json (``--name`` picks another name).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_configs(config: str, overrides: list[str]):
    from kdistill import config as cfglib
    from teacher.generate import TeacherGenerateConfig
    from teacher.pretrain import TeacherPretrainConfig
    from teacher.train import TeacherTrainConfig

    data = cfglib.read_yaml(config)
    if overrides:
        data = cfglib.merge(data, cfglib.parse_overrides(overrides))
    made = {}
    for section, cls in (("teacher_pretrain", TeacherPretrainConfig), ("teacher_train", TeacherTrainConfig),
                         ("teacher_generate", TeacherGenerateConfig)):
        made[section] = cfglib.from_dict(cls, data.get(section) or {}, source=config, prefix=section)
    return made


def run(root: Path, out: Path, cfgs, threads: int) -> dict:
    from kdistill.data.sources import open_source
    from teacher.generate import generate_rationales, load_study_list
    from teacher.pretrain import default_corpus, pretrain
    from teacher.train import train

    data = open_source("mimic", root)
    times, figures = {}, {}
    for section in cfgs.values():
        section.num_threads = threads
    cfgs["teacher_generate"].cpu = True
    steps = [
        ("teacher_pretrain", lambda: pretrain(cfgs["teacher_pretrain"], default_corpus(root), out / "teacher" / "base",
                                              data=data)),
        ("teacher_train", lambda: train(cfgs["teacher_train"], out / "teacher" / "base", default_corpus(root),
                                        out / "teacher", data=data)),
        ("teacher_generate", lambda: generate_rationales(load_study_list(data, cfgs["teacher_generate"].splits),
                                                         out / "teacher", out / "rationales", cfgs["teacher_generate"])),
    ]
    for name, fn in steps:
        wall, cpu = time.perf_counter(), _cpu()
        figures[name] = fn()
        times[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu() - cpu, 1)}
        print(f"{name}: {times[name]}", flush=True)
    return {"times": times, "figures": figures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo", help="finished run whose data/ is the phantom")
    parser.add_argument("--data-root")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "demo.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="run folder to write (default: a temporary one)")
    parser.add_argument("--name", default="teacher_demo", help="results file name")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(args.threads)
    root = Path(args.data_root or Path(args.run) / "data")
    cfgs = stage_configs(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        got = run(root, out, cfgs, args.threads)
    gen = got["figures"]["teacher_generate"]
    total = {k: round(sum(t[k] for t in got["times"].values()), 1) for k in ("wall_s", "cpu_s")}
    result = {"config": args.config, "overrides": args.overrides, "threads": args.threads, "times": got["times"],
              "total": total, "consistent_fraction": gen["consistent_fraction"], "rows": gen["rows"],
              "consistent": gen["consistent"], "retried": gen["retried"],
              "pretrain": {k: got["figures"]["teacher_pretrain"].get(k) for k in ("params", "docs", "pairs", "eval_loss")},
              "train": {k: got["figures"]["teacher_train"].get(k) for k in ("eval_loss", "final_train_loss")}}
    print(f"{'stage':<18}{'wall s':>10}{'cpu s':>10}")
    for name, t in got["times"].items():
        print(f"{name:<18}{t['wall_s']:>10}{t['cpu_s']:>10}")
    print(f"{'total':<18}{total['wall_s']:>10}{total['cpu_s']:>10}")
    print(f"consistent: {gen['consistent']} of {gen['rows']} ({gen['consistent_fraction']:.1%}), {gen['retried']} retried")
    path = RESULTS / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
