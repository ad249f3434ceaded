"""Student step time per vision tower, measured side by side in one process, as ratios.

Each candidate is the ``student`` section of a run config plus key=value overrides (one quoted
argument per candidate; the word ``bf16`` in it trains under bf16 autocast, as
``mixed_precision: bf16`` does). Every candidate takes a classification-only step and a full-recipe
step (finding heads + report + rationale + feature KD, with the config's augmentation and gradient
clipping) on the same real batches, round after round, so that a machine shared with other work
slows them all alike; the table gives median milliseconds and the ratio to the first candidate.

    python benchmarks/tower_step_time.py --run runs/demo --config configs/demo.yaml --threads 1 \\
        "" "model.vision_model=kdistill-resnet18 model.feature_stride=8 model.decoder_pool=2 bf16"

Writes benchmarks/results/tower_step_time.json (or --out).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished run folder: prepared/, teacher/, rationales/")
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tower_step_time.json"))
    p.add_argument("candidates", nargs="+", help='override strings, e.g. "" "model.feature_stride=8 bf16"')
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from kdistill import config as cfglib
    from kdistill.io import write_json
    from kdistill.training import native_bf16
    from student.augment import augment
    from student.data import Collate
    from student.losses import student_loss
    from student.model import create_student
    from student.train_config import StudentTrainConfig
    from student.train_data import build_datasets, load_inputs

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    inputs, runs = None, []
    for text in args.candidates:
        words, bf16 = text.split(), "bf16" in text.split()
        cfg = cfglib.load(StudentTrainConfig, args.config, [w for w in words if w != "bf16"], section="student")
        inputs = inputs or load_inputs(cfg, run / "prepared", run / "teacher", run / "rationales")
        data = build_datasets(cfg, *inputs, run / "teacher", run / "rationales")
        torch.manual_seed(0)
        model = create_student(data.model_cfg, inputs[1]).train()
        if cfg.loss.needs_regions:  # loss.ha / gcam_dice (the demo recipe): region masks at this tower's grid
            data.train.attach_regions(model.grid)
        collate = Collate(model.tokens, model.image_size, data.model_cfg.max_text_len, True)
        loader = torch.utils.data.DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True,
                                             collate_fn=collate, drop_last=True)
        batches = [b for _, b in zip(range(3), loader)]
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        runs.append({"candidate": text, "bf16": bf16, "cfg": cfg, "model": model, "opt": opt, "batches": batches,
                     "ms": {"cls": [], "full": []}})

    def step(r, batch, weights) -> float:
        model, cfg, started = r["model"], r["cfg"], time.perf_counter()
        x = augment(batch["images"], cfg.augment, torch.Generator().manual_seed(0)) if cfg.augment.enabled else batch["images"]
        with torch.autocast("cpu", torch.bfloat16, enabled=r["bf16"]):
            texts = weights.kd or weights.emb
            out = model(x, batch["report_ids"] if weights.rep else None, batch["rationale_ids"] if texts else None,
                        batch["rationale_mask"], with_embedding=bool(weights.emb))
            loss, _ = student_loss(out, batch, weights)
        r["opt"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        r["opt"].step()
        return (time.perf_counter() - started) * 1000

    for i in range(args.rounds + 1):  # round 0 warms up and is not counted
        for r in runs:
            full = r["cfg"].loss
            for kind, w in (("cls", dataclasses.replace(full, rep=0, kd=0, emb=0, tok=0)), ("full", full)):
                ms = step(r, r["batches"][i % len(r["batches"])], w)
                if i:
                    r["ms"][kind].append(ms)
    rows = []
    for r in runs:
        med = {k: sorted(v)[len(v) // 2] for k, v in r["ms"].items()}
        rows.append({"candidate": r["candidate"] or "(the config as is)", "grid": list(r["model"].grid),
                     "tower_params": sum(q.numel() for q in r["model"].visual.parameters()),
                     "cls_ms": med["cls"], "full_ms": med["full"]})
    for row in rows:
        row["cls_ratio"] = row["cls_ms"] / rows[0]["cls_ms"]
        row["full_ratio"] = row["full_ms"] / rows[0]["full_ms"]
        print(f"{row['candidate'][:90]:90s} grid {row['grid']}  cls {row['cls_ms']:6.0f} ms ({row['cls_ratio']:.2f}x)"
              f"  full {row['full_ms']:6.0f} ms ({row['full_ratio']:.2f}x)")
    write_json(Path(args.out), {"what": "student step time per tower, side by side", "threads": args.threads,
                                "cpu_native_bf16": native_bf16(cpu=True),
                                "rounds": args.rounds, "config": args.config, "rows": rows,
                                "command": "python benchmarks/tower_step_time.py " + " ".join(
                                    f'"{a}"' if " " in a or not a else a for a in (argv or sys.argv[1:]))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
