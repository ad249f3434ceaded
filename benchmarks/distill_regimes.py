"""Does distillation help where the labels are noisy or scarce? The three students of
benchmarks/student_quality.py (classification only / + report / + distillation, its VARIANTS and
scoring) in several regimes, each scored against the TRUE labels of a held-out phantom of the same
regime (its ``ground_truth.csv.gz``, every study, never trained or tuned on): micro/macro-AUC over
14 findings and the label F1 of the generated reports (kdistill.labeler on the report vs the true
labels), seeds paired, and the paired difference "+ distillation" - "+ report" with a t interval.

A regime is ``NAME:RUN:HELDOUT[:key=value,...]``: RUN holds prepared/, teacher/ (tokenizer) and
rationales/ (the teacher's cache, made in ``report`` mode for issue 18), HELDOUT is a phantom root
with prepared/ and ground_truth.csv.gz; the overrides go to the student config of that regime
(e.g. ``label_fraction=0.1``). Each student's validation curve (train_log.csv: val micro-AUC every
``eval_every`` steps, on the run's validate split and its label file) is kept in the JSON, to
check the step count. Results are written after every student, and a rerun with the same --out
skips the students already there, so a long grid can be stopped and continued.

    python benchmarks/distill_regimes.py --config configs/demo.yaml --threads 1 --seeds 0 1 2 3 \\
        --regime "today:D/p0:D/h0" --regime "report_style:D/p1:D/h1" \\
        --regime "labels_10pct:D/p0:D/h0:label_fraction=0.1" [student key=value ...]

(the README's "Distillation against the true labels" gives the reduced setting it was run at and
the commands that made D).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import student_quality as sq  # noqa: E402  (the three students, their config and scoring)

from kdistill import config as cfglib  # noqa: E402
from kdistill.io import nonfinite_to_none, write_json  # noqa: E402
from kdistill.labels import FINDINGS  # noqa: E402

METRICS = ("micro_auc", "macro_auc", "f1_micro", "f1_macro")


def parse_regime(text: str) -> dict:
    parts = text.split(":")
    if len(parts) < 3:
        raise SystemExit(f"--regime {text!r}: expected NAME:RUN:HELDOUT[:key=value,...]")
    overrides = [o for o in ":".join(parts[3:]).split(",") if o]
    return {"name": parts[0], "run": parts[1], "heldout": parts[2], "overrides": overrides}


def true_labels(root: str | Path, study_ids) -> np.ndarray:
    """(n, 14) rows of ``root/ground_truth.csv.gz`` in the order of ``study_ids`` (1 present, NaN not)."""
    with gzip.open(Path(root) / "ground_truth.csv.gz", "rt", newline="") as fh:
        rows = {int(r["study_id"]): [float(r[f]) if r[f] else math.nan for f in FINDINGS] for r in csv.DictReader(fh)}
    return np.asarray([rows[int(s)] for s in study_ids], dtype=np.float32)


def val_curve(out_dir: Path) -> list[list[float]]:
    """[step, val micro-AUC] from a student's train_log.csv."""
    path = out_dir / "train_log.csv"
    if not path.is_file():
        return []
    with path.open() as fh:
        return [[int(r["step"]), float(r["val_micro_auc"])] for r in csv.DictReader(fh) if r.get("val_micro_auc")]


def paired(diffs: list[float]) -> dict:
    """Mean of paired differences, its sd over seeds and a two-sided 95% t interval."""
    from scipy import stats

    d = np.asarray([x for x in diffs if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(d) < 2:
        return {"mean": float(d.mean()) if len(d) else math.nan, "sd": math.nan, "ci95": [math.nan, math.nan], "n": len(d)}
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return {"mean": float(d.mean()), "sd": float(d.std(ddof=1)), "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "n": int(len(d)), "positive": int((d > 0).sum())}


def summarise(per_seed: dict) -> dict:
    out = {}
    for regime, by_variant in per_seed.items():
        summary = {name: {m: dict(zip(("mean", "sd"), sq._mean_sd([r.get(m, math.nan) for r in rows.values()])))
                          for m in METRICS} for name, rows in by_variant.items()}
        dist, rep = by_variant.get("+ distillation", {}), by_variant.get("+ report", {})
        seeds = sorted(set(dist) & set(rep), key=int)
        diff = {m: paired([dist[s][m] - rep[s][m] for s in seeds]) for m in METRICS}
        out[regime] = {"students": summary, "distilled_minus_report": diff, "paired_seeds": [int(s) for s in seeds]}
    return out


def heldout_set(heldout: str, limit: int = 0):
    """Every study of a held-out phantom's prepared cache (the first ``limit``) and their true labels."""
    import datasets

    from kdistill.data.prepare import load_prepared

    held = load_prepared(str(Path(heldout) / "prepared"))
    held = datasets.concatenate_datasets([held[k] for k in held])
    if limit and len(held) > limit:
        held = held.select(range(limit))
    return held, true_labels(heldout, held["study_id"])


def prevalence_baseline(rg: dict, limit: int = 0) -> float:
    """Micro-AUC on the held-out truth of scoring each finding with its training prevalence (the
    run's label file): what micro-AUC gives for knowing prevalence alone."""
    from kdistill.data.prepare import load_prepared
    from kdistill.labels import apply_policy
    from kdistill.scoring import prevalence_baseline_auc

    train = load_prepared(str(Path(rg["run"]) / "prepared"))["train"]
    ty, tm = apply_policy(np.asarray(train["labels"], dtype=np.float32), uncertain="ignore", blank="zeros")
    _, truth = heldout_set(rg["heldout"], limit)
    y, m = apply_policy(truth, uncertain="ignore", blank="zeros")
    return prevalence_baseline_auc(ty, tm, y, m)


def curve_means(curves: dict) -> dict:
    """regime -> student -> [[step, mean val micro-AUC over seeds]] (from the per-student curves)."""
    acc: dict = {}
    for key, curve in curves.items():
        regime, name, _ = key.split("/")
        for step, auc in curve:
            acc.setdefault(regime, {}).setdefault(name, {}).setdefault(step, []).append(auc)
    return {r: {n: [[st, round(float(np.mean(v)), 4)] for st, v in sorted(by.items())] for n, by in rv.items()}
            for r, rv in acc.items()}


def report(blob: dict) -> None:
    for regime, s in blob["summary"].items():
        base = blob.get("regimes", {}).get(regime, {}).get("constant_prevalence_micro_auc")
        print(f"\n{regime}: mean ± sd over seeds {s['paired_seeds']}" + (f" (constant prevalence: micro-AUC {base:.4f})" if base else ""))
        for name, sm in s["students"].items():
            print(f"  {name:<22}" + "".join(f"{m} {v['mean']:.4f} ± {v['sd']:.3f}  " for m, v in sm.items() if v["mean"] == v["mean"]))
        print("  distilled - report: " + "  ".join(
            f"{m} {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" for m, d in s["distilled_minus_report"].items()))
        for name, curve in blob.get("val_curve_means", {}).get(regime, {}).items():
            print(f"  val micro-AUC by step, {name:<22}" + "  ".join(f"{st}: {a:.3f}" for st, a in curve))


def combine(paths: list[str], out: str) -> int:
    """One result file from several runs of this script (e.g. one process per regime)."""
    blob: dict = {}
    for path in paths:
        part = json.loads(Path(path).read_text())
        for key in ("regimes", "val_curves", "wall_s_per_student"):
            blob.setdefault(key, {}).update(part.get(key, {}))
        for regime, by_variant in part.get("per_seed", {}).items():
            for name, rows in by_variant.items():
                blob.setdefault("per_seed", {}).setdefault(regime, {}).setdefault(name, {}).update(rows)
        blob["scored_on"] = part.get("scored_on")
    for rg in blob.get("regimes", {}).values():
        if "constant_prevalence_micro_auc" not in rg:
            rg["constant_prevalence_micro_auc"] = prevalence_baseline(rg, rg.get("heldout_max") or rg["heldout_studies"])
    blob["summary"] = summarise(blob.get("per_seed", {}))
    blob["val_curve_means"] = curve_means(blob.get("val_curves", {}))
    report(blob)
    write_json(out, nonfinite_to_none(blob), default=str)
    print(f"wrote {out} from {len(paths)} file(s)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", action="append", default=[], help="NAME:RUN:HELDOUT[:key=value,...]")
    p.add_argument("--config", help="YAML with the student settings (a run config or a bare student section)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--variants", nargs="+", default=list(sq.VARIANTS), choices=list(sq.VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--heldout-max", type=int, default=0, help="score on the first N held-out studies (0: all)")
    p.add_argument("--combine", nargs="+", metavar="JSON", help="merge result files of this script into --out and exit")
    p.add_argument("--work", default="runs/bench_distill_regimes", help="where the students are trained")
    p.add_argument("--out", default="benchmarks/results/distill_regimes.json")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the student config (every regime)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    if args.combine:
        return combine(args.combine, args.out)
    regimes = [parse_regime(r) for r in args.regime]
    blob = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    per_seed = blob.get("per_seed", {})
    curves, walls = blob.get("val_curves", {}), blob.get("wall_s_per_student", {})
    blob.setdefault("regimes", {})
    started = time.time()
    for rg in regimes:
        run = Path(rg["run"])
        data, tok, cache = sq._inputs(str(run / "prepared"), str(run / "teacher"), str(run / "rationales"), None)
        held, truth = heldout_set(rg["heldout"], args.heldout_max)
        base = sq._student_config(args.config, list(args.overrides) + rg["overrides"])
        base = dataclasses.replace(base, num_threads=args.threads, save_every=0)
        blob["regimes"][rg["name"]] = {**rg, "heldout_studies": len(held), "train_studies": len(data["train"]),
                                       "heldout_max": args.heldout_max,
                                       "constant_prevalence_micro_auc": prevalence_baseline(rg, args.heldout_max),
                                       "config": cfglib.to_dict(base)}
        for seed in args.seeds:  # seed-outer: a stopped grid still has complete pairs
            for name in args.variants:
                cfg0 = dataclasses.replace(base, loss=dataclasses.replace(base.loss, **sq.VARIANTS[name]))
                done = per_seed.get(rg["name"], {}).get(name, {})
                if str(seed) in done:
                    continue
                cfg = dataclasses.replace(cfg0, seed=seed)
                out_dir = Path(args.work) / rg["name"] / name.replace(" ", "_").replace("+", "plus") / f"seed{seed}"
                t0 = time.time()
                from student.train import train

                train(cfg, out_dir, data, tok, cache if cfg.needs_rationales else None,
                      tokenizer_dir=str(run / "teacher"), rationale_path=str(run / "rationales"), seed=seed)
                t1 = time.time()
                row = sq._score(out_dir, held, bool(cfg.loss.rep or cfg.loss.kd), cfg.batch_size, truth=truth)
                key = f"{rg['name']}/{name}/{seed}"
                walls[key] = {"train_s": round(t1 - t0, 1), "score_s": round(time.time() - t1, 1)}
                curves[key] = val_curve(out_dir)
                per_seed.setdefault(rg["name"], {}).setdefault(name, {})[str(seed)] = row
                print(f"{rg['name']:<14} {name:<22} seed {seed}: " + "  ".join(f"{k} {v:.4f}" for k, v in row.items())
                      + f"  ({walls[key]['train_s']:.0f} s + {walls[key]['score_s']:.0f} s)", flush=True)
                blob.update(per_seed=per_seed, val_curves=curves, wall_s_per_student=walls, summary=summarise(per_seed),
                            scored_on="true labels (ground_truth.csv.gz) of every study of each regime's held-out phantom")
                write_json(args.out, nonfinite_to_none(blob), default=str)
    report({"summary": summarise(per_seed), "val_curve_means": curve_means(curves)})
    print(f"wrote {args.out} ({time.time() - started:.0f} s this call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
