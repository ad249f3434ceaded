"""``kdistill student active``: pool-based active learning of the student's finding heads,
explanation-guided (xGAL) or not.

One run = one strategy and one seed. The pool split (``pool_split``) is cut into a labelled seed
set (``seed_size`` studies, a seeded draw) and the unlabelled pool. Round r: train the student on
the labelled studies (masked BCE on the 14 finding heads, ``max_steps`` steps; warm start from
round r-1's weights or from the initial weights, ``warm_start``), record the micro-AUC on the
fixed ``test_split`` (``kdistill.scoring.auc_summary``, metric ``test_micro_auc``), then score the
pool and acquire ``acquire`` studies, until ``budget`` studies were acquired (or the pool is
empty). The last round trains and records but acquires nothing.

Strategies (``student.acquisition``): ``random``; ``entropy`` (mean binary entropy over
findings); ``mc_dropout`` (BALD over ``mc_passes`` passes with dropout on the tower's tokens);
``misalignment`` (1 - soft Dice of the student's Grad-CAM map, ``GradCAM.from_model``'s, with the
expert region, mean over the study's findings with a region); ``xgal`` = lambda * uncertainty +
(1 - lambda) * misalignment on rank-normalised scores. Fallback: a pool study without any region
has no misalignment; in its place it takes its rank-normalised entropy (a pool without any region
makes ``misalignment`` behave as ``entropy``; the log says so once per run).

Resumable by round: after each round the run folder gets the weights (weights_roundR.pt) and
then state.json (labelled ids, every round's record), both atomically. A rerun with the same config
continues after the last finished round; each round's randomness comes from (seed, round) only,
so the acquisitions are those of an uninterrupted run.

Output folder: runs/STRATEGY_seedS/{state.json, weights_roundR.pt}; curve.csv (strategy, seed, round,
labelled, metric), curve.json, curve.png (metric vs labelled count, one line per strategy, the
band min..max over seeds), table.md, acquired.json (the study ids acquired per round).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.config import ConfigError, config_hash, to_dict
from kdistill.errors import DataError
from kdistill.io import atomic_path, nonfinite_to_none, write_json, write_text_atomic
from kdistill.labels import apply_policy
from student import acquisition as acq
from student.active_config import ActiveConfig
from student.pool import Studies, batches, build_student, load_studies, state_of, token_dropout

log = logging.getLogger("kdistill.student.active")

METRIC = "test_micro_auc"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *map(int, key)])


def _torch_seed(seed: int, round_: int) -> None:
    torch.manual_seed(int(seed) * 100003 + int(round_))


# --- training and scoring

def train_round(model, studies: Studies, rows: np.ndarray, cfg: ActiveConfig, seed: int, round_: int) -> float:
    """``max_steps`` AdamW steps of masked BCE on ``rows``; the mean loss of the last 10 steps."""
    targets, mask = apply_policy(studies.labels[rows], uncertain="ignore", blank="zeros")
    targets, mask = torch.from_numpy(targets), torch.from_numpy(mask)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = _rng(seed, 3, round_)
    _torch_seed(seed, round_)
    model.train()
    losses = []
    for _ in range(cfg.max_steps):
        pick = rng.choice(len(rows), size=min(cfg.batch_size, len(rows)), replace=False)
        tokens = token_dropout(model.encode_image(studies.images[torch.as_tensor(rows[pick])]), cfg.dropout, True)
        logits = model.classify(tokens)[0]
        per = F.binary_cross_entropy_with_logits(logits, targets[pick], reduction="none")
        loss = (per * mask[pick]).sum() / mask[pick].sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses[-10:]))


@torch.no_grad()
def predict_probs(model, images: torch.Tensor, dropout: float = 0.0, batch_size: int = 64) -> np.ndarray:
    """(n, 14) probabilities; ``dropout`` > 0 gives one stochastic (MC-dropout) pass."""
    model.eval()
    out = []
    for sl in batches(len(images), batch_size):
        tokens = token_dropout(model.encode_image(images[sl]), dropout, dropout > 0)
        out.append(torch.sigmoid(model.classify(tokens)[0]))
    return torch.cat(out).numpy() if out else np.zeros((0, 14), np.float32)


def grad_cam_maps(model, images: torch.Tensor, findings: list[int]) -> torch.Tensor:
    """Grad-CAM maps (B, len(findings), H, W) of the student's finding logits at the input size:
    ``kdistill.saliency.GradCAM.from_model``'s maps (same layer, formula, normalisation and
    upsampling) from one forward pass and one backward per finding."""
    from kdistill.saliency.base import eval_mode, normalise_maps, upsample
    from kdistill.saliency.gradcam import cam_from_gradients

    reshape = model.visual.cam_reshape or (lambda t: t)
    with eval_mode(model), torch.enable_grad():
        tokens = model.encode_image(images)
        logits = model.classify(tokens)[0]
        out = []
        for n, j in enumerate(findings):
            (grad,) = torch.autograd.grad(logits[:, j].sum(), tokens, retain_graph=n < len(findings) - 1)
            raw = cam_from_gradients(reshape(tokens.detach()), reshape(grad))
            out.append(normalise_maps(upsample(raw, tuple(images.shape[-2:]))))
    return torch.stack(out, 1).detach()


def misalignment(model, studies: Studies, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """1 - soft Dice of the student's Grad-CAM map (:func:`grad_cam_maps`, at the input size) with
    the expert region, mean over each study's findings with a region; NaN for a study without."""
    from kdistill.saliency.regions import region_masks

    size = tuple(studies.images.shape[-2:])
    total, count = np.zeros(len(rows)), np.zeros(len(rows))
    for sl in batches(len(rows), batch_size):
        part = rows[sl]
        masks, has = region_masks(studies.roi_bits[part], size)
        findings = has.any(0).nonzero().flatten().tolist()
        if not findings:
            continue
        maps = grad_cam_maps(model, studies.images[torch.as_tensor(part)], findings).numpy()
        for n, j in enumerate(findings):
            sel = has[:, j].numpy()
            dice = acq.soft_dice(maps[sel, n], masks[torch.as_tensor(sel), j].numpy())
            idx = np.arange(sl.start, sl.stop)[sel]
            total[idx] += 1 - dice
            count[idx] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def acquisition_scores(strategy: str, model, studies: Studies, pool: np.ndarray, cfg: ActiveConfig,
                       seed: int, round_: int, said: set[str]) -> np.ndarray | None:
    """Scores of the pool studies (higher: acquire first); None for ``random``."""
    if strategy == "random":
        return None

    images = studies.images[torch.as_tensor(pool)]
    ent = acq.entropy_scores(predict_probs(model, images))

    def bald() -> np.ndarray:
        _torch_seed(seed, 1000 + round_)
        samples = np.stack([predict_probs(model, images, cfg.dropout or 0.1) for _ in range(cfg.mc_passes)])
        return acq.bald_scores(samples)

    if strategy in ("entropy", "mc_dropout"):
        return ent if strategy == "entropy" else bald()
    mis = misalignment(model, studies, pool)
    has = ~np.isnan(mis)
    if not has.all() and "fallback" not in said:
        said.add("fallback")
        log.warning("%s: %d of %d pool studies have no expert region: their misalignment is their rank-normalised "
                    "entropy (the fallback)%s", strategy, int((~has).sum()), len(pool),
                    "; no pool study has one, so misalignment ranks by entropy alone" if not has.any() else "")
    ranks = acq.misalignment_ranks(np.nan_to_num(mis), has, ent)
    if strategy == "misalignment":
        return ranks
    unc = ent if cfg.xgal_uncertainty == "entropy" else bald()
    return acq.xgal_scores(unc, ranks, cfg.xgal_lambda)


def test_metric(model, test: Studies) -> dict[str, float]:
    from kdistill.scoring import auc_summary

    targets, mask = apply_policy(test.labels, uncertain="ignore", blank="zeros")
    s = auc_summary(predict_probs(model, test.images), targets, mask)
    return {METRIC: s["micro_auc"], "test_macro_auc": s["macro_auc"]}


# --- one run, resumable by round

def _saved_state(state_file: Path, key: str) -> dict[str, Any] | None:
    """The run's state.json when this config wrote it; None when there is none or another config's."""
    if not state_file.is_file():
        return None
    import json

    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(state_file, f"unreadable run state ({err}); delete the folder to start over") from None
    if state.get("config_hash") != key:
        log.warning("%s: made by another config: starting this run over", state_file)
        return None
    return state


def _new_state(cfg: ActiveConfig, strategy: str, seed: int, ids, key: str) -> dict[str, Any]:
    """A fresh run's state: the seeded seed set labelled, no rounds yet."""
    if len(ids) <= cfg.seed_size:
        raise DataError(None, f"the pool split {cfg.pool_split!r} has {len(ids)} studies: no pool is left after a "
                              f"seed set of {cfg.seed_size}")
    first = _rng(seed, 1).choice(len(ids), size=cfg.seed_size, replace=False)
    state = {"config_hash": key, "strategy": strategy, "seed": seed, "labelled": [ids[i] for i in sorted(first)],
             "rounds": [], "stopped_at_pool": False}
    if cfg.budget > len(ids) - cfg.seed_size:
        state["stopped_at_pool"] = True
        log.warning("budget %d is larger than the pool (%d studies after the seed set): the run stops when the "
                    "pool is empty", cfg.budget, len(ids) - cfg.seed_size)
    return state


def run_one(cfg: ActiveConfig, strategy: str, seed: int, pool_studies: Studies, test: Studies,
            run_dir: Path, stop_after: int | None = None) -> dict[str, Any]:
    """One strategy and seed; ``stop_after`` (tests) returns after that many rounds are done
    in this call, as a killed run would."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = config_hash({"config": {k: v for k, v in to_dict(cfg).items() if k not in ("strategies", "repeats",
                                                                                   "num_threads")},
                       "strategy": strategy, "seed": seed})
    torch.manual_seed(seed)
    model = build_student(cfg.model, cfg.checkpoint)
    initial = state_of(model)
    ids = pool_studies.study_id
    index = {s: i for i, s in enumerate(ids)}
    state_file = run_dir / "state.json"
    state = _saved_state(state_file, key)
    if state is None:
        state = _new_state(cfg, strategy, seed, ids, key)
    elif cfg.warm_start and state["rounds"]:
        model.load_state_dict(torch.load(run_dir / state["weights"], weights_only=True))
    budget = min(cfg.budget, len(ids) - cfg.seed_size)
    said: set[str] = set()
    done_here = 0
    while True:
        round_ = len(state["rounds"])
        labelled = np.array(sorted(index[s] for s in state["labelled"]), dtype=np.int64)
        acquired_so_far = len(labelled) - cfg.seed_size
        if round_ and acquired_so_far >= budget and state["rounds"][-1]["labelled"] == len(labelled):
            break  # the last round (nothing left to acquire) is recorded
        if not cfg.warm_start:
            model.load_state_dict(initial)
        started = time.perf_counter()
        loss = train_round(model, pool_studies, labelled, cfg, seed, round_)
        record = {"round": round_, "labelled": int(len(labelled)), **test_metric(model, test), "train_loss": loss}
        new: list[str] = []
        want = min(cfg.acquire, budget - acquired_so_far)
        if want > 0:
            pool = np.setdiff1d(np.arange(len(ids)), labelled)
            scores = acquisition_scores(strategy, model, pool_studies, pool, cfg, seed, round_, said)
            rng = _rng(seed, 2, round_)
            pick = rng.choice(len(pool), size=want, replace=False) if scores is None else acq.select_top(scores, want, rng)
            new = [ids[i] for i in pool[np.sort(pick)]]
        record["acquired"] = new
        record["wall_s"] = round(time.perf_counter() - started, 2)
        state["labelled"] = state["labelled"] + new
        state["rounds"].append(record)
        # Weights first, under the round's own name, then the state naming them: a run killed
        # in between resumes from the previous round's state and weights.
        previous = state.get("weights")
        state["weights"] = f"weights_round{round_}.pt"
        with atomic_path(run_dir / state["weights"]) as tmp:
            torch.save(state_of(model), tmp)
        write_json(state_file, nonfinite_to_none(state))
        if previous and previous != state["weights"]:
            (run_dir / previous).unlink(missing_ok=True)
        log.info("%s seed %d round %d: %d labelled, %s %.4f", strategy, seed, round_, record["labelled"], METRIC,
                 record[METRIC] if record[METRIC] == record[METRIC] else float("nan"))
        done_here += 1
        if not new:
            break
        if stop_after is not None and done_here >= stop_after:
            return state
    return state


# --- all runs, the curve

def run(cfg: ActiveConfig, out_dir: str | Path, prepared=None) -> dict[str, Any]:
    from kdistill.training import set_num_threads

    cfg.validate()
    set_num_threads(cfg.num_threads)
    prepared = prepared if prepared is not None else cfg.prepared
    if prepared is None:
        raise ConfigError("active.prepared: no prepared cache given (--prepared or prepared=PATH)")
    out_dir = Path(out_dir)
    size = build_student(cfg.model, cfg.checkpoint).image_size
    pool = load_studies(prepared, [cfg.pool_split], size)
    test = load_studies(prepared, [cfg.test_split], size)
    runs = []
    for strategy in cfg.strategies:
        for seed in range(cfg.seed, cfg.seed + cfg.repeats):
            runs.append(run_one(cfg, strategy, seed, pool, test, out_dir / "runs" / f"{strategy}_seed{seed}"))
    return write_curve(runs, out_dir, cfg)


def curve_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"strategy": r["strategy"], "seed": r["seed"], "round": x["round"], "labelled": x["labelled"],
             METRIC: x[METRIC]} for r in runs for x in r["rounds"]]


def summary_table(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Per strategy and labelled count: mean, sd and range of the metric over seeds; and as markdown."""
    keys = sorted({(r["strategy"], r["labelled"]) for r in rows}, key=lambda k: (k[1], k[0]))
    out = []
    for strategy, n in keys:
        vals = np.array([r[METRIC] for r in rows if r["strategy"] == strategy and r["labelled"] == n], dtype=float)
        out.append({"strategy": strategy, "labelled": n, "seeds": len(vals), "mean": float(np.nanmean(vals)),
                    "sd": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    "min": float(np.nanmin(vals)), "max": float(np.nanmax(vals))})
    lines = [f"| labelled | strategy | seeds | {METRIC} mean | sd | min - max |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['labelled']} | {r['strategy']} | {r['seeds']} | {r['mean']:.4f} | {r['sd']:.4f} | "
              f"{r['min']:.4f} - {r['max']:.4f} |" for r in out]
    return out, "\n".join(lines)


def write_curve(runs: list[dict[str, Any]], out_dir: Path, cfg: ActiveConfig) -> dict[str, Any]:
    rows = curve_rows(runs)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["strategy", "seed", "round", "labelled", METRIC], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "curve.csv", buf.getvalue())
    summary, table = summary_table(rows)
    write_text_atomic(out_dir / "table.md", table + "\n")
    acquired = {f"{r['strategy']}_seed{r['seed']}": {"seed_set": r["labelled"][:cfg.seed_size],
                                                    "rounds": [x["acquired"] for x in r["rounds"]]} for r in runs}
    write_json(out_dir / "acquired.json", acquired)
    result = {"metric": METRIC, "rows": rows, "summary": summary, "stopped_at_pool": any(r["stopped_at_pool"] for r in runs),
              "config": to_dict(cfg)}
    write_json(out_dir / "curve.json", nonfinite_to_none(result))
    plot_curve(summary, out_dir / "curve.png")
    result["table"] = table
    return result


def plot_curve(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in dict.fromkeys(r["strategy"] for r in summary):
        pts = sorted((r for r in summary if r["strategy"] == strategy), key=lambda r: r["labelled"])
        x = [r["labelled"] for r in pts]
        ax.plot(x, [r["mean"] for r in pts], marker="o", label=strategy)
        ax.fill_between(x, [r["min"] for r in pts], [r["max"] for r in pts], alpha=0.2)
    ax.set_xlabel("labelled studies")
    ax.set_ylabel(METRIC)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run_stage(cfg: ActiveConfig, ctx) -> dict[str, Any]:
    out = run(cfg, ctx.stage_dir("active"), prepared=cfg.prepared or ctx.stage_dir("prepare"))
    return {"summary": out["summary"]}


def main(argv: list[str] | None = None, prog: str = "kdistill student active") -> int:
    from kdistill.command import add_config_arguments, stage_config

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[1])
    parser.add_argument("--prepared", help="prepared image cache (kdistill data prepare); or prepared=PATH")
    parser.add_argument("--checkpoint", help="a trained student folder to start from (default: from scratch)")
    parser.add_argument("--out", required=True, help="output folder (curve.csv, curve.png, table.md, runs/)")
    add_config_arguments(parser, "active", example="strategies='[random,xgal]' budget=60 repeats=3")
    args = parser.parse_intermixed_args(argv)
    cfg = stage_config(ActiveConfig, args, "active", flags={"prepared": args.prepared, "checkpoint": args.checkpoint})
    out = run(cfg, args.out)
    print(out["table"])
    if out["stopped_at_pool"]:
        print("the budget was larger than the pool: runs stopped when the pool was empty")
    print(f"curve: {Path(args.out) / 'curve.csv'}  plot: {Path(args.out) / 'curve.png'}")
    return 0
