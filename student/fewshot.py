"""``kdistill student fewshot``: explanation-guided few-shot learning (EGxFSL).

A prototypical head (Snell et al., 2017) on the student's image embedding (the tower's feature
map flattened, ``embedding: flatten``, or the mean of its tokens, ``mean``): the prototype of a
class is the mean embedding of its K support studies and a study's logit for a class is minus
its squared Euclidean distance to that prototype. Training is episodic on the *base* findings
(N-way K-shot, Q queries per class, cross-entropy on the queries) plus ``gcam_dice`` times the
Grad-CAM Dice loss (``student.losses.gcam_dice_loss``) of each support study that has an expert
region for its class, the logits being its negative distances to the episode's prototypes.
``gcam_dice=0`` is the unguided baseline.

Episodes use studies with exactly one positive among the finding set; a study of finding f is in
class f. Base and novel findings are disjoint, so evaluation (``eval_episodes`` seeded episodes
per N and K on the novel findings only) measures generalisation to findings never trained on.
Reported per (N, K): mean accuracy over episodes and its 95% interval,
mean +- 1.96 * sd / sqrt(episodes) (sd with ddof 1), as is usual in the few-shot literature.

Episode i of a stream is drawn by ``numpy.random.default_rng([seed, stream, ...., i])``: the same
seed gives the same episodes, whatever else ran before. Within an episode every class has
exactly K support and Q query studies (class-balanced), drawn without replacement.

Output folder: results.json (config, per-(N, K) accuracy, training summary) and results.md (the table).
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.config import ConfigError, to_dict
from kdistill.io import write_json, write_text_atomic
from kdistill.labels import FINDING_INDEX
from student.fewshot_config import FewShotConfig
from student.pool import Studies, batches, build_student, load_studies

log = logging.getLogger("kdistill.student.fewshot")

TRAIN_STREAM, EVAL_STREAM = 0, 1


# --- episodes

def class_pools(labels: np.ndarray, findings: list[str], classes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Row indices of the studies whose only positive among ``findings`` is each of ``classes``
    (default: all of ``findings``)."""
    cols = [FINDING_INDEX[f] for f in findings]
    pos = np.nan_to_num(np.asarray(labels)[:, cols], nan=0.0) == 1
    single = pos.sum(1) == 1
    return {f: np.flatnonzero(single & pos[:, findings.index(f)]) for f in (classes or findings)}


def sample_episode(pools: dict[str, np.ndarray], n_way: int, k_shot: int, n_query: int,
                   rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """N classes among those with at least K + Q studies, then K support and Q query studies of
    each, all distinct. Returns (classes, support (N, K) rows, query (N, Q) rows); class c of the
    episode is ``classes[c]``. An error names how many classes qualify when fewer than N do."""
    need = k_shot + n_query
    eligible = sorted(c for c, rows in pools.items() if len(rows) >= need)
    if len(eligible) < n_way:
        counts = ", ".join(f"{c}: {len(r)}" for c, r in sorted(pools.items()))
        raise ConfigError(f"a {n_way}-way {k_shot}-shot episode with {n_query} queries needs {n_way} findings with at "
                          f"least {need} single-finding studies; {len(eligible)} qualify ({counts})")
    chosen = [eligible[i] for i in rng.choice(len(eligible), size=n_way, replace=False)]
    draws = np.stack([rng.choice(pools[c], size=need, replace=False) for c in chosen])
    return chosen, draws[:, :k_shot], draws[:, k_shot:]


def episode_rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), *map(int, key)])


# --- the prototypical head

def embed(tokens: torch.Tensor, how: str = "flatten") -> torch.Tensor:
    """Tower tokens (B, N, C) -> image embedding: ``flatten`` (B, N * C), the feature map as
    ProtoNet's conv-4 embedding is (it keeps where a finding is), or ``mean`` (B, C)."""
    return tokens.flatten(1) if how == "flatten" else tokens.mean(1)


def prototypes(support: torch.Tensor) -> torch.Tensor:
    """Support embeddings (N, K, C) -> prototypes (N, C), the mean of each class's K."""
    return support.mean(1)


def proto_logits(x: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Logits (B, N) = minus the squared Euclidean distance of each embedding to each prototype."""
    return -((x[:, None, :] - protos[None, :, :]) ** 2).sum(-1)


def accuracy_interval(acc: np.ndarray, z: float = 1.96) -> dict[str, float]:
    """Mean episode accuracy and its 95% interval half-width z * sd / sqrt(n) (sd ddof 1; 0 for one episode)."""
    acc = np.asarray(acc, dtype=np.float64)
    sd = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
    half = z * sd / math.sqrt(len(acc))
    mean = float(acc.mean())
    return {"mean_accuracy": mean, "ci95": half, "low": mean - half, "high": mean + half, "sd": sd,
            "episodes": int(len(acc))}


def episode_accuracy(emb: torch.Tensor, support: np.ndarray, query: np.ndarray) -> float:
    """Share of the query studies whose nearest prototype is their class's; ``emb`` (n, C) rows."""
    n, k = support.shape
    protos = prototypes(emb[torch.as_tensor(support.reshape(-1))].reshape(n, k, -1))
    q = torch.as_tensor(query.reshape(-1))
    pred = proto_logits(emb[q], protos).argmax(-1)
    truth = torch.arange(n).repeat_interleave(query.shape[1])
    return float((pred == truth).float().mean())


# --- training and evaluation

def episode_loss(model, studies: Studies, classes: list[str], support: np.ndarray, query: np.ndarray,
                 gcam_weight: float, how: str = "flatten") -> tuple[torch.Tensor, dict[str, float]]:
    """Query cross-entropy plus ``gcam_weight`` times the Grad-CAM Dice loss of the support studies
    with a region of their own class."""
    from kdistill.saliency.regions import region_masks
    from student.losses import gcam_dice_loss

    n, k = support.shape
    s_rows = support.reshape(-1)
    s_tokens = model.encode_image(studies.images[torch.as_tensor(s_rows)])
    s_emb = embed(s_tokens, how)
    protos = prototypes(s_emb.reshape(n, k, -1))
    q_emb = embed(model.encode_image(studies.images[torch.as_tensor(query.reshape(-1))]), how)
    target = torch.arange(n).repeat_interleave(query.shape[1])
    ce = F.cross_entropy(proto_logits(q_emb, protos), target)
    parts = {"ce": float(ce.detach())}
    if gcam_weight <= 0:
        return ce, parts
    masks, has = region_masks(studies.roi_bits[s_rows], model.grid)
    cols = [FINDING_INDEX[c] for c in classes]
    masks, has = masks[:, cols], has[:, cols]
    own = torch.zeros(n * k, n, dtype=torch.bool)
    own[torch.arange(n * k), torch.arange(n).repeat_interleave(k)] = True
    valid = own & has
    dice = gcam_dice_loss(s_tokens, proto_logits(s_emb, protos), masks, valid, reshape=model.visual.cam_reshape)
    parts["gcam_dice"] = float(dice.detach())
    parts["region_supports"] = int(valid.sum())
    return ce + gcam_weight * dice, parts


def train_episodes(model, studies: Studies, cfg: FewShotConfig) -> dict[str, Any]:
    """``max_steps`` base episodes, one AdamW step each; returns a summary of the losses."""
    if cfg.max_steps == 0:
        return {"steps": 0}
    pools = class_pools(studies.labels, cfg.finding_set, cfg.base)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    model.train()
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for step in range(cfg.max_steps):
        classes, support, query = sample_episode(pools, cfg.train_ways, cfg.train_shots, cfg.queries,
                                                 episode_rng(cfg.seed, TRAIN_STREAM, step))
        loss, parts = episode_loss(model, studies, classes, support, query, cfg.gcam_dice, cfg.embedding)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite few-shot loss at episode {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(parts)
    last = history[-min(20, len(history)):]
    summary = {"steps": cfg.max_steps, "wall_s": round(time.perf_counter() - started, 2),
               "last20_ce": float(np.mean([h["ce"] for h in last]))}
    if cfg.gcam_dice > 0:
        summary["last20_gcam_dice"] = float(np.mean([h["gcam_dice"] for h in last]))
        summary["region_supports_per_episode"] = float(np.mean([h["region_supports"] for h in history]))
    return summary


@torch.no_grad()
def embed_all(model, images: torch.Tensor, how: str = "flatten", batch_size: int = 64) -> torch.Tensor:
    model.eval()
    out = [embed(model.encode_image(images[sl]), how) for sl in batches(len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def evaluate(model, studies: Studies, cfg: FewShotConfig) -> list[dict[str, Any]]:
    """``eval_episodes`` seeded novel episodes per (N, K): accuracy mean and 95% interval."""
    pools = class_pools(studies.labels, cfg.finding_set, list(cfg.novel))
    rows = np.unique(np.concatenate([r for r in pools.values()])) if pools else np.zeros(0, np.int64)
    emb = torch.zeros(len(studies), 1)
    if len(rows):
        emb_rows = embed_all(model, studies.images[torch.as_tensor(rows)], cfg.embedding)
        emb = torch.zeros(len(studies), emb_rows.shape[1])
        emb[torch.as_tensor(rows)] = emb_rows
    results = []
    for n in cfg.ways:
        for k in cfg.shots:
            acc = []
            for i in range(cfg.eval_episodes):
                _, support, query = sample_episode(pools, n, k, cfg.queries, episode_rng(cfg.seed, EVAL_STREAM, n, k, i))
                acc.append(episode_accuracy(emb, support, query))
            results.append({"ways": n, "shots": k, "queries": cfg.queries, **accuracy_interval(np.asarray(acc))})
    return results


def run(cfg: FewShotConfig, out_dir: str | Path | None, prepared=None) -> dict[str, Any]:
    """Train on the base findings (unless ``max_steps`` is 0) and evaluate on the novel ones."""
    from kdistill.training import set_num_threads

    cfg.validate()
    set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    prepared = prepared if prepared is not None else cfg.prepared
    if prepared is None:
        raise ConfigError("fewshot.prepared: no prepared cache given (--prepared or prepared=PATH)")
    model = build_student(cfg.model, cfg.checkpoint)
    studies = load_studies(prepared, cfg.splits, model.image_size)
    # Fail on impossible evaluation settings before spending the training time.
    novel = class_pools(studies.labels, cfg.finding_set, list(cfg.novel))
    for n in cfg.ways:
        for k in cfg.shots:
            sample_episode(novel, n, k, cfg.queries, episode_rng(cfg.seed, EVAL_STREAM, n, k, 0))
    started = time.perf_counter()
    training = train_episodes(model, studies, cfg)
    results = evaluate(model, studies, cfg)
    counts = {f: int(len(r)) for f, r in class_pools(studies.labels, cfg.finding_set).items()}
    out = {"method": "prototypical" + (f" + gcam_dice x{cfg.gcam_dice}" if cfg.gcam_dice else " (unguided)"),
           "seed": cfg.seed, "base": cfg.base, "novel": list(cfg.novel), "single_finding_studies": counts,
           "studies_with_region": int(studies.has_region.sum()), "training": training, "results": results,
           "wall_s": round(time.perf_counter() - started, 2), "config": to_dict(cfg)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "results.json", out)
        write_text_atomic(out_dir / "results.md", table(out["results"], out["method"]) + "\n")
    return out


def table(results: list[dict[str, Any]], method: str = "") -> str:
    lines = ["| method | N-way | K-shot | episodes | accuracy | 95% interval |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {method} | {r['ways']} | {r['shots']} | {r['episodes']} | {r['mean_accuracy']:.3f} | "
                     f"{r['low']:.3f} - {r['high']:.3f} |")
    return "\n".join(lines)


def run_stage(cfg: FewShotConfig, ctx) -> dict[str, Any]:
    out = run(cfg, ctx.stage_dir("fewshot"), prepared=cfg.prepared or ctx.stage_dir("prepare"))
    return {"results": out["results"]}


def main(argv: list[str] | None = None, prog: str = "kdistill student fewshot") -> int:
    from kdistill.command import add_config_arguments, stage_config

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[1])
    parser.add_argument("--prepared", help="prepared image cache (kdistill data prepare); or prepared=PATH")
    parser.add_argument("--checkpoint", help="a trained student folder: its tower is the encoder (default: from scratch)")
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md)")
    add_config_arguments(parser, "fewshot", example="novel='[Cardiomegaly,Edema]' gcam_dice=0 max_steps=100")
    args = parser.parse_intermixed_args(argv)
    cfg = stage_config(FewShotConfig, args, "fewshot", flags={"prepared": args.prepared, "checkpoint": args.checkpoint})
    out = run(cfg, args.out)
    print(table(out["results"], out["method"]))
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0
