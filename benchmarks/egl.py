"""What explanation-guided learning buys against a shortcut (issue 15): students trained on a phantom
whose corner marker follows one finding in the train split, scored on a held-out phantom of another
seed where the marker follows the finding (consistent) or its absence (reversed).

    plain            loss.cls only (a student of finding heads: no text, so no distillation)
    + ha             H-EGL L_HA (penalised Dice of class maps vs expert regions), loss.ha
    + dal            H-EGL L_DAL (mean pairwise cosine of the class maps), loss.dal
    + ha + dal       H-EGL's hybrid
    + gcam_dice      EGxFSL's Grad-CAM Dice vs regions, loss.gcam_dice

each region-guided one at region coverage ``rois_fraction`` 1.0 and 0.1 (plain and + dal use no
regions: one run each), paired by seed (seed s: training phantom seed s, training seed s, held-out
phantoms seed 1000 + s).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/egl.py --seeds 0 1 --steps 150 --threads 1

A run already scored in --work with the same settings is read back, so seeds can be added by
separate invocations (``--seeds 0``, then ``--seeds 0 1``) each under the ~10 min budget.

Metrics, on every study of the held-out phantom (all its splits):
  auc_reversed     micro-AUC over 14 findings, marker reversed
  gap              the shortcut finding's AUC on the consistent set minus on the reversed set
                   (the same images but for the markers): what the student takes from the marker
  auc_sc_rev       the shortcut finding's AUC on the reversed set
  energy           energy-in-region of the class maps: for each positive finding with a region, the
                   share of its map's mass (bilinearly upsampled to the image) inside the region
  marker_mass      the shortcut finding's map mass on the marker's pixels (shortcut.jsonl), images
                   with the marker; a uniform map gives the marker's area share (``marker_area``)
  auc_noise        micro-AUC on the reversed set under Gaussian noise sigma 0.05 (H-EGL)
  deletion         deletion AUC (eval.saliency_probes.deletion_insertion, 10 steps, baseline 0) of the class
                   maps over every (study, positive finding with a region) pair of the reversed set; lower:
                   the map's top pixels are the ones the logit needs; deletion_gap: a random order's minus it
Mean and standard deviation over seeds, and each variant's paired difference to plain with its
95% t-interval over seeds (paired_diff_ci95). ``--distill``: each variant also with the demo recipe's
text losses (rep/kd/emb, configs/demo.yaml's text model on the tiny ViT), the rationales written by
the demo's teacher for each training phantom (``kdistill teacher generate --data-root
WORK/train{s}_rois1/data --teacher runs/demo/teacher --out RATIONALES/s{s}``), at every coverage (the
phantoms of one seed differ only in which regions they keep, so one rationale cache serves them all); a
distilled run is compared with distillation alone and with its own run without distillation.
``--table-from JSON`` rebuilds a results file's table from its stored runs (no training). Writes
benchmarks/results/egl.json. Not a timed test; figures depend on --steps/--n-train (CPU-bound).

Measured (results/egl.json): seeds 0-7, 100 steps, batch 32, 400-study training phantom (64 px,
tiny ViT, 8x8 maps), marker on Pleural Effusion at 0.9, held-out phantoms of 300 studies; mean
(sd), [paired difference to plain, its sd]:
  plain              micro-AUC reversed 0.800 (0.026)  gap 0.185 (0.208)  energy 0.047  AUC noise 0.798
  + ha, rois 1.0     0.868 [+0.068 +- 0.020]  gap 0.023 [-0.162]  energy 0.343 [+0.296]  noise 0.861
  + dal              0.798 [-0.002 +- 0.018]  gap 0.115 [-0.070]  energy 0.053 [+0.006]  noise 0.795
  + ha + dal, 1.0    0.863 [+0.064 +- 0.014]  gap 0.020 [-0.165]  energy 0.341 [+0.294]  noise 0.857
  + gcam_dice, 1.0   0.810 [+0.010 +- 0.019]  gap 0.082 [-0.103]  energy 0.069 [+0.022]  noise 0.807
  + ha, rois 0.1     0.807 [+0.007 +- 0.029]  gap 0.088 [-0.097]  energy 0.233 [+0.186]  noise 0.801
  + ha + dal, 0.1    0.808 [+0.009 +- 0.031]  gap 0.089 [-0.096]  energy 0.235 [+0.188]  noise 0.804
  + gcam_dice, 0.1   0.784 [-0.016 +- 0.018]  gap 0.071 [-0.114]  energy 0.061 [+0.014]  noise 0.782
L_HA with every training region closes most of the shortcut gap and puts a third of the maps'
mass in the true regions (uniform: ~0.05); at 10% coverage it still moves the maps (0.23) but the
AUC gain is within noise. L_DAL adds nothing measurable alone or on top of L_HA here (H-EGL's
hybrid is not ahead of L_HA alone), and the Grad-CAM Dice moves the class-query maps little (it
trains the tower's Grad-CAM, not these maps) and costs ~1.5x a step. Marker mass is small for
every variant (a uniform map: 0.004): at 64 px the marker is 4x4 pixels inside one map cell.
With distillation on (results/egl_distill.json, seeds 0-3, both coverages, every variant): distill alone
  0.792 [-0.010 vs plain], distill + ha 1.0 0.874 [+0.082 (+0.052, +0.113) vs distill; +0.008 (+0.001,
  +0.015) vs + ha without text], distill + gcam_dice 1.0 deletion 0.164 [-0.084 (-0.161, -0.007) vs distill];
  at 10% coverage no micro-AUC gain is distinguishable from 0 with or without distillation.
Not run: more steps, larger images (the marker is one map cell at 64 px).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {  # name -> (loss weights, uses regions)
    "plain": ({}, False),
    "+ ha": ({"ha": 1.0}, True),
    "+ dal": ({"dal": 0.1}, False),
    "+ ha + dal": ({"ha": 1.0, "dal": 0.1}, True),
    "+ gcam_dice": ({"gcam_dice": 0.5}, True),
    "+ gcam_dice K=1": ({"gcam_dice": 0.5, "gcam_findings": 1}, True),  # one sampled finding a step, unbiased
}
MODEL = {"vision_model": "kdistill-vit-tiny",
         "vision_overrides": {"image_size": 64, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
         "head_width": 64, "head_heads": 2, "head_layers": 1}
TEXT_MODEL = {  # configs/demo.yaml's text side (the distilled recipe), on the same tiny ViT
    "decoder_width": 64, "decoder_heads": 2, "text_layers": 1, "multimodal_layers": 2, "max_text_len": 64,
    "rationale_order": "conclusion_first", "embedding_pool": "prompt", "report_context": "rationale",
    "report_context_tokens": 32, "decoder_reads_findings": False, "text_grad_to_tower": 0.25}
DISTILL_LOSS = {"rep": 1.0, "kd": 1.0, "emb": 0.2}  # configs/demo.yaml's loss (LossWeights defaults, emb 0.2)
METRICS = ("auc_reversed", "auc_consistent", "auc_sc_cons", "auc_sc_rev", "gap", "energy", "marker_mass", "auc_noise",
           "deletion", "deletion_gap")
DELETION = {"steps": 10, "random_orders": 1, "baseline": 0.0}  # eval.saliency_probes.deletion_insertion settings


def _phantom(root: Path, seed: int, n: int, finding: str, strengths: dict[str, float], rois_fraction: float = 1.0):
    """Synthesise (once) and prepare a 64 px phantom; returns the prepared DatasetDict and its shortcut rows."""
    from kdistill.data.phantom import PhantomConfig, synthesize
    from kdistill.data.prepare import load_prepared, prepare

    if not (root / "prepared" / "meta.json").is_file():
        cfg = PhantomConfig(n_studies=n, seed=seed, image_size=64, corpus_mb=0, shortcut_finding=finding,
                            shortcut_splits=strengths, rois_fraction=rois_fraction)
        synthesize(cfg, root / "data")
        prepare(root / "data", root / "prepared", size=64, workers=1)
    marker = {}
    with (root / "data" / "shortcut.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            marker.setdefault(row["study_id"], row)  # the study's first (frontal) image
    return load_prepared(root / "prepared"), marker


def _all_rows(prepared) -> dict[str, np.ndarray]:
    from kdistill.data.prepare import read_batch

    parts = [read_batch(prepared[s], slice(0, len(prepared[s])), ["study_id", "image", "labels", "roi_bits"])
             for s in ("train", "validate", "test") if s in prepared]
    return {"study_id": sum((p["study_id"] for p in parts), []),
            **{k: np.concatenate([p[k] for p in parts]) for k in ("image", "labels", "roi_bits")}}


@torch.no_grad()
def _predict(model, images: np.ndarray, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    x = torch.from_numpy(images).float()[:, None] / 255.0
    if noise:
        g = torch.Generator().manual_seed(seed)
        x = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    probs, maps = [], []
    for i in range(0, len(x), 64):
        out = model(x[i:i + 64])
        probs.append(torch.sigmoid(out["logits"].float()))
        maps.append(out["maps"].float())
    return torch.cat(probs).numpy(), torch.cat(maps)


def _score(model, sets: dict, finding_idx: int, seed: int) -> dict[str, float]:
    from kdistill.labels import apply_policy
    from kdistill.saliency.base import upsample
    from kdistill.saliency.regions import finding_masks
    from kdistill.scoring import auc_summary, binary_auc

    out: dict[str, float] = {}
    for name in ("consistent", "reversed"):
        rows, marker = sets[name]
        y, m = apply_policy(rows["labels"], uncertain="ignore", blank="zeros")
        probs, maps = _predict(model, rows["image"])
        out[f"auc_{name}"] = auc_summary(probs, y, m)["micro_auc"]
        keep = m[:, finding_idx] > 0
        out["auc_sc_cons" if name == "consistent" else "auc_sc_rev"] = binary_auc(y[keep, finding_idx], probs[keep, finding_idx])
        if name != "reversed":
            continue
        noisy, _ = _predict(model, rows["image"], noise=0.05, seed=seed)
        out["auc_noise"] = auc_summary(noisy, y, m)["micro_auc"]
        size = rows["image"].shape[-2:]
        full = upsample(maps.flatten(0, 1), size).reshape(*maps.shape[:2], *size).clamp_min(0)
        regions = finding_masks(rows["roi_bits"]).float()
        pos = torch.from_numpy((y == 1) & (m > 0)) & (regions.flatten(2).amax(-1) > 0)
        mass = full.flatten(2).sum(-1).clamp_min(1e-12)
        energy = (full * regions).flatten(2).sum(-1) / mass
        out["energy"] = float(energy[pos].mean()) if bool(pos.any()) else math.nan
        out.update(_deletion(model, rows["image"], full, pos, seed))
        shares, area = [], math.nan
        for i, sid in enumerate(rows["study_id"]):
            row = marker.get(sid)
            if row is None or not row["drawn"]:
                continue
            x0, y0, x1, y1 = row["box"]
            fm = full[i, finding_idx]
            shares.append(float(fm[y0:y1, x0:x1].sum() / fm.sum().clamp_min(1e-12)))
            area = (x1 - x0) * (y1 - y0) / float(size[0] * size[1])
        out["marker_mass"] = float(np.mean(shares)) if shares else math.nan
        out["marker_area"] = area
    out["gap"] = out["auc_sc_cons"] - out["auc_sc_rev"]
    return out


def _deletion(model, images: np.ndarray, full: torch.Tensor, pos: torch.Tensor, seed: int) -> dict[str, float]:
    """Deletion AUC (eval.saliency_probes.deletion_insertion: pixels removed in the map's order, the finding's
    probability integrated over the removed share; lower = the map finds what the model uses) over every
    (study, positive finding with a region) pair of the reversed set, and its gap to a random order."""
    from eval.saliency_probes import deletion_insertion

    i, f = torch.nonzero(pos, as_tuple=True)
    if len(i) == 0:
        return {"deletion": math.nan, "deletion_gap": math.nan}
    x = torch.from_numpy(images[i.numpy()]).float()[:, None] / 255.0
    r = deletion_insertion(model, x, full[i, f].numpy(), f, steps=DELETION["steps"], baseline=DELETION["baseline"],
                           random_orders=DELETION["random_orders"], seed=seed)
    return {"deletion": float(np.mean(r["deletion_auc"])), "deletion_gap": float(np.mean(r["deletion_gap"]))}


def _interval(diffs) -> tuple[float, float]:
    """Paired-by-seed 95% t-interval of the mean difference (n - 1 degrees of freedom)."""
    from scipy import stats

    v = [x for x in diffs if x is not None and not math.isnan(x)]
    if len(v) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / math.sqrt(len(v)))
    return float(np.mean(v)) - half, float(np.mean(v)) + half


def _train(prepared, weights: dict, out_dir: Path, seed: int, args, distill: dict | None = None) -> dict:
    """``distill``: {"prepared": path, "rationales": path}: the text losses on (configs/demo.yaml's rep/kd/emb),
    the teacher's tokenizer (--tokenizer) and rationales; else a student of finding heads only."""
    from kdistill import config as cfglib
    from student.train import StudentTrainConfig, train
    from student.train_cli import train_from_paths

    loss = {**({"rep": 0.0, "kd": 0.0, "emb": 0.0} if distill is None else DISTILL_LOSS), **weights}
    cfg = cfglib.from_dict(StudentTrainConfig, {
        "model": MODEL if distill is None else {**MODEL, **TEXT_MODEL}, "loss": loss, "batch_size": args.batch_size, "max_steps": args.steps, "lr": args.lr,
        "warmup_steps": max(1, args.steps // 10), "eval_every": max(1, args.steps // 3), "save_every": 0,
        "log_every": max(1, args.steps // 3), "cpu": True, "num_threads": args.threads, "tensorboard": False,
        "seed": seed})
    if distill is not None:
        return train_from_paths(cfg, out_dir, distill["prepared"], args.tokenizer, distill["rationales"], seed=seed,
                                overwrite=True)
    return train(cfg, out_dir, prepared, None, None, overwrite=True)


def _mean_sd(values):
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-train", type=int, default=400, help="studies of the training phantom (80%% train)")
    p.add_argument("--n-eval", type=int, default=300, help="studies of the held-out phantoms")
    p.add_argument("--finding", default="Pleural Effusion", help="the finding the marker follows")
    p.add_argument("--strength", type=float, default=0.9, help="train/validate shortcut strength (reversed: 1 - it)")
    p.add_argument("--coverages", type=float, nargs="+", default=[1.0, 0.1], help="rois_fraction values")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--distill", action="store_true",
                   help="also train each variant with distillation on, at every coverage (needs --tokenizer, --rationales)")
    p.add_argument("--distill-only", action="store_true", help="--distill, without the no-text runs")
    p.add_argument("--tokenizer", default="runs/demo/teacher", help="--distill: the teacher folder (its tokenizer)")
    p.add_argument("--rationales", default="runs/egl_rationales/s{seed}",
                   help="--distill: the rationale folder of training phantom seed {seed} (kdistill teacher generate); "
                        "the phantoms of one seed at every coverage share their studies, so one folder serves all")
    p.add_argument("--table-from", default=None, help="rebuild the table from this results JSON's runs (no training)")
    p.add_argument("--work", default="runs/egl_bench", help="phantoms and students (reused when present)")
    p.add_argument("--out", default="benchmarks/results/egl.json")
    return p


def run_key(variant: str, distill: bool, coverage: float) -> str:
    """A run's name in the results: "+ ha @ rois 0.1", "distill + ha @ rois 1", "plain", "distill"."""
    key = variant
    if distill:
        key = "distill" if variant == "plain" else variant.replace("+", "distill +", 1)
    return f"{key} @ rois {coverage:g}" if VARIANTS[variant][1] else key


def _run_one(key: str, variant: str, distill: bool, cov: float, seed: int, args, train_prep, evals, fidx) -> dict:
    """Train and score one (variant, coverage, distill) run of one seed, or read it back from --work when an
    earlier invocation ran it with the same settings."""
    from student import load

    weights, _ = VARIANTS[variant]
    work, t = Path(args.work), time.time()
    out_dir = work / "students" / f"{key.replace(' ', '_').replace('@', 'at').replace('+', 'p')}_s{seed}"
    done = out_dir / "egl_scored.json"
    setting = {"steps": args.steps, "scoring": 2, "batch_size": args.batch_size, "lr": args.lr, "n_train": args.n_train,
               "n_eval": args.n_eval, "finding": args.finding, "strength": args.strength, "weights": weights,
               **({"distill": DISTILL_LOSS, "text_model": TEXT_MODEL} if distill else {})}
    cached = json.loads(done.read_text()) if done.is_file() else None
    if cached is not None and cached.get("setting") == setting:
        return cached["scored"]
    how = {"prepared": str(work / f"train{seed}_rois{cov:g}" / "prepared"),
           "rationales": args.rationales.format(seed=seed)} if distill else None
    metrics = _train(train_prep, weights, out_dir, seed, args, how)
    scored = _score(load(out_dir).eval(), evals, fidx, seed)
    scored.update(train_s=round(time.time() - t, 1), val_micro_auc=metrics["validation"]["micro_auc"])
    from kdistill.io import nonfinite_to_none, write_json

    write_json(done, nonfinite_to_none({"setting": setting, "scored": scored}), indent=None)
    return scored


def _run_seed(seed: int, args, fidx: int, runs: dict[str, dict[int, dict]]) -> None:
    """Every planned run of one seed into ``runs``: held-out phantoms seed 1000 + seed, training phantom seed."""
    work, s = Path(args.work), args.strength
    evals = {}
    for name, strength in (("consistent", s), ("reversed", 1 - s)):
        prep, marker = _phantom(work / f"eval{seed}_{name}", 1000 + seed, args.n_eval, args.finding,
                                {k: strength for k in ("train", "validate", "test")})
        evals[name] = (_all_rows(prep), marker)
    for cov in args.coverages:
        train_prep, _ = _phantom(work / f"train{seed}_rois{cov:g}", seed, args.n_train, args.finding,
                                 {"train": s, "validate": s}, rois_fraction=cov)
        plan = [] if args.distill_only else [(v, False) for v in args.variants]
        if args.distill or args.distill_only:
            plan += [(v, True) for v in args.variants]
        for variant, distill in plan:
            key = run_key(variant, distill, cov)
            if seed in runs.get(key, {}):
                continue  # plain / + dal (and their distilled runs): coverage does not change them
            scored = _run_one(key, variant, distill, cov, seed, args, train_prep, evals, fidx)
            runs.setdefault(key, {})[seed] = scored
            print(f"seed {seed} {key:<26} " + " ".join(f"{k} {scored[k]:.3f}" for k in METRICS if k in scored), flush=True)


def _undistilled(key: str) -> str:
    """The same variant's run without distillation: "distill + ha @ rois 1" -> "+ ha @ rois 1"."""
    return "plain" if key == "distill" else key.replace("distill +", "+", 1)


def summarise(runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Per run and metric: mean and sd over seeds, the paired-by-seed difference to plain with its 95%
    t-interval; a distilled run also against distillation alone and against its own undistilled run."""
    def paired(by_seed, ref, metric):
        diffs = [by_seed[x][metric] - ref[x][metric] for x in by_seed if x in ref and metric in ref[x]]
        return _mean_sd(diffs), list(_interval(diffs)), len(diffs)

    table, plain, dplain = {}, runs.get("plain", {}), runs.get("distill", {})
    for key, by_seed in runs.items():
        row = {}
        for metric in METRICS:
            if not all(metric in r for r in by_seed.values()):
                continue  # a metric added after these runs (deletion) is not in an older results file
            mean, sd = _mean_sd([by_seed[sd_][metric] for sd_ in by_seed])
            (dmean, dsd), ci, n = paired(by_seed, plain, metric)
            row[metric] = {"mean": mean, "sd": sd, "paired_diff_vs_plain": dmean, "paired_diff_sd": dsd,
                           "paired_diff_ci95": ci, "n_seeds": n}
            if key.startswith("distill +"):  # the guidance's effect with distillation on
                (dd, _), dci, _ = paired(by_seed, dplain, metric)
                row[metric].update(paired_diff_vs_distill=dd, paired_diff_vs_distill_ci95=dci)
            if key.startswith("distill") and _undistilled(key) in runs:  # what the text losses add to the variant
                (du, _), uci, _ = paired(by_seed, runs[_undistilled(key)], metric)
                row[metric].update(paired_diff_vs_undistilled=du, paired_diff_vs_undistilled_ci95=uci)
        table[key] = row
    return table


def _print_table(table: dict, runs: dict, args) -> float:
    """The table on stdout; returns the marker's area share (a uniform map's marker mass)."""
    s = args.strength
    print(f"\nEGL vs shortcut: seeds {args.seeds}, {args.steps} steps, batch {args.batch_size}, n_train {args.n_train}, "
          f"n_eval {args.n_eval}, shortcut {args.finding} strength {s} (reversed {1 - s:.1f}); mean (sd) over seeds, "
          f"[paired diff vs plain (its 95% t-interval)]")
    cols = tuple(c for c in ("auc_reversed", "gap", "energy", "marker_mass", "auc_noise", "deletion")
                 if any(c in r for by in runs.values() for r in by.values()))
    kw = max(len(k) for k in table) + 2 if table else 24
    print(f"{'variant':<{kw}}" + "".join(f"{c:>40}" for c in cols))
    for key, row in table.items():
        cells = []
        for c in cols:
            r = row[c]
            lo, hi = r["paired_diff_ci95"]
            d = "" if key == "plain" else f" [{r['paired_diff_vs_plain']:+.3f} ({lo:+.3f},{hi:+.3f})]"
            cells.append(f"{r['mean']:.3f} ({r['sd']:.3f}){d}")
        print(f"{key:<{kw}}" + "".join(f"{c:>40}" for c in cells))
    return next((v["marker_area"] for by in runs.values() for v in by.values() if not math.isnan(v["marker_area"])), math.nan)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from kdistill.io import nonfinite_to_none, write_json
    from kdistill.labels import FINDINGS

    started = time.time()
    runs: dict[str, dict[int, dict]] = {}
    if args.table_from:  # no training: the table (with its intervals) rebuilt from a results file's runs
        stored = json.loads(Path(args.table_from).read_text())
        runs = {k: {int(sd_): {m: (math.nan if v is None else v) for m, v in r.items()} for sd_, r in by.items()}
                for k, by in stored["runs"].items()}
        for name in ("seeds", "steps", "batch_size", "n_train", "n_eval", "finding", "strength"):
            setattr(args, name, stored.get(name, getattr(args, name)))  # the header then says what the file ran
    for seed in ([] if args.table_from else args.seeds):
        _run_seed(seed, args, FINDINGS.index(args.finding), runs)
    table = summarise(runs)
    area = _print_table(table, runs, args)
    print(f"marker area share (a uniform map's marker_mass): {area:.4f}; wall {time.time() - started:.0f} s")
    result = {"benchmark": "egl", "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "n_train": args.n_train, "n_eval": args.n_eval, "finding": args.finding, "strength": args.strength,
              "coverages": args.coverages, "model": MODEL, "variants": {k: VARIANTS[k][0] for k in args.variants},
              "threads": args.threads, "deletion": DELETION,
              "distill": {"loss": DISTILL_LOSS, "text_model": TEXT_MODEL, "tokenizer": args.tokenizer,
                          "rationales": args.rationales} if args.distill or args.distill_only else None,
              "marker_area": area, "wall_s": round(time.time() - started, 1),
              "table": table, "runs": {k: {str(sd_): v for sd_, v in by.items()} for k, by in runs.items()}}
    if args.table_from:  # the file's own settings and runs, its table rebuilt
        result = {**stored, "table": table,
                  "intervals": "paired_diff_ci95: 95% t-interval of the mean paired-by-seed difference to plain"}
    write_json(Path(args.out), nonfinite_to_none(result), default=str)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
