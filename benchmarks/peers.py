"""The student's finding heads beside what a user would pick instead, on the same prepared cache.

Every model trains on the cache's train split with the same images, label policy, batch size and
number of optimizer steps, and is scored on its test split and on every study of each
``--heldout`` cache (a phantom of another seed, never trained or tuned on):

    student      kdistill's student (student.train.train with the config's student section); with
                 --tokenizer/--rationales its full recipe, otherwise classification only
    resnet18     torchvision ResNet-18 from scratch, 1-channel first conv, AdamW + one-cycle
    densenet121  torchvision DenseNet-121 the same way (the most-cited chest X-ray baseline)
    logreg       scikit-learn logistic regression per finding on --logreg-size² area-averaged
                 pixels (standardised; C picked on the validation split)
    constant     each finding's training prevalence for every study: what micro-AUC gives for free
                 (findings differ in prevalence, so pooled entries rank above chance)

Micro/macro-AUC over 14 findings (eval.classification.auc_metrics; uncertain left out, blank
negative), with 95% bootstrap intervals over studies (bootstrap_auc_ci, 1,000 resamples) per
seed; the table shows mean ± sd over seeds and the per-seed intervals' mean bounds. Training time
is wall-clock on this machine with --threads torch threads (the student's includes its
validation passes, as the CNNs' does); each seed records its thread count and the load averages
at its start and end (other jobs on the cores slow it), and the summary its time per seed. The
CNNs keep their best validation micro-AUC weights, checked every eval_every steps, as the
student does.

    kdistill data synth --out /tmp/tower_heldout --n 1000 --seed 1 --size 256 corpus_mb=0
    kdistill data prepare /tmp/tower_heldout --size 128 --out /tmp/tower_heldout/prepared
    python benchmarks/peers.py --prepared runs/demo/prepared --heldout /tmp/tower_heldout/prepared \\
        --config configs/demo.yaml --tokenizer runs/demo/teacher --rationales runs/demo/rationales \\
        --seeds 0 1 2 --threads 1

A held-out set is named after its folder (``heldout:tower_heldout`` here; the parent's name when
the folder is called prepared*), and --combine merges only runs with the same set names, so
rebuild it under that name to add runs to benchmarks/results/peers_demo.json.

Any prepared cache works (``--prepared``, e.g. one made from NIH ChestX-ray14 with ``kdistill data
prepare ROOT --source nih``): the script only needs train/validate/test splits.
Writes benchmarks/results/peers.json (or --out).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("student", "resnet18", "densenet121", "logreg", "constant")


# ----------------------------------------------------------------------------- data

def _load(path: str | Path, splits: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Images (n, S, S) uint8 and raw labels (n, 14) of the named splits (all when None)."""
    from kdistill.data.prepare import load_prepared, read_batch

    data = load_prepared(path)
    names = [s for s in (splits or tuple(data)) if s in data and len(data[s])]
    if not names:
        raise SystemExit(f"{path}: none of the splits {splits or list(data)} has studies")
    parts = [read_batch(data[s], slice(0, len(data[s])), ["image", "labels"]) for s in names]
    return {"image": np.concatenate([p["image"] for p in parts]), "labels": np.concatenate([p["labels"] for p in parts])}


def _targets(labels: np.ndarray, uncertain: str = "ignore", blank: str = "zeros") -> tuple[np.ndarray, np.ndarray]:
    from kdistill.labels import apply_policy

    y, mask = apply_policy(np.asarray(labels, np.float32), uncertain=uncertain, blank=blank)
    return y.astype(np.float32), mask.astype(np.float32)


def _micro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    from eval.classification import auc_metrics

    y, mask = _targets(labels)
    return float(auc_metrics(probs, y, mask).get("auc_micro_14", math.nan))


# ----------------------------------------------------------------------------- CNN peers

def _cnn(name: str):
    import torchvision
    from torch import nn

    if name == "resnet18":
        net = torchvision.models.resnet18(weights=None, num_classes=14)
        net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    elif name == "densenet121":
        net = torchvision.models.densenet121(weights=None, num_classes=14)
        net.features.conv0 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    else:
        raise ValueError(name)
    return net


def _to_input(images: np.ndarray):
    import torch

    from kdistill.data.images import to_unit_float

    x = torch.from_numpy(to_unit_float(images))[:, None]
    return ((x - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)  # the student's normalisation


def _cnn_probs(net, images: np.ndarray, batch: int = 64) -> np.ndarray:
    import torch

    net.eval()
    with torch.no_grad():
        out = [torch.sigmoid(net(_to_input(images[i:i + batch]))).numpy() for i in range(0, len(images), batch)]
    net.train()
    return np.concatenate(out)


def train_cnn(name: str, train: dict, val: dict, args, seed: int, augment_cfg=None) -> Callable:
    """AdamW + one-cycle for ``args.steps`` steps of ``args.batch_size``, epochs without replacement;
    the weights of the best validation micro-AUC (checked every ``args.eval_every`` steps) are kept."""
    import torch

    from student.augment import augment

    torch.manual_seed(seed)
    net = _cnn(name).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    y, mask = (torch.from_numpy(a) for a in _targets(train["labels"]))
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(y)), 0
    best, best_state = -1.0, None
    for step in range(1, args.steps + 1):
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(y)), 0
        rows = np.sort(order[pos:pos + args.batch_size])
        pos += args.batch_size
        x = _to_input(train["image"][rows])
        if augment_cfg is not None:  # the student's jitter, on the normalised batch's [0, 1] form
            x = (augment(x * 0.25 + 0.5, augment_cfg, torch.Generator().manual_seed(seed * 100003 + step)) - 0.5) / 0.25
        with torch.autocast("cpu", torch.bfloat16, enabled=args.cnn_bf16):
            logits = net(x).float()
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[rows], reduction="none")
        loss = (per * mask[rows]).sum() / mask[rows].sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            auc = _micro_auc(_cnn_probs(net, val["image"]), val["labels"])
            if auc > best:
                best, best_state = auc, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return lambda images: _cnn_probs(net, images)


# ----------------------------------------------------------------------------- other peers

def _pixels(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average (n, S, S) down to (n, size*size) floats in [0, 1]."""
    from kdistill.data.images import to_unit_float

    x = to_unit_float(images)
    f = x.shape[1] // size
    if f < 1 or x.shape[1] % size:
        raise SystemExit(f"--logreg-size {size} must divide the image side {x.shape[1]}")
    return x.reshape(len(x), size, f, size, f).mean(axis=(2, 4)).reshape(len(x), -1)


def train_logreg(train: dict, val: dict, args, seed: int) -> Callable:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(_pixels(train["image"], args.logreg_size))
    xt = scaler.transform(_pixels(train["image"], args.logreg_size))
    y, mask = _targets(train["labels"])

    def fit(c: float) -> Callable:
        models = []
        for j in range(y.shape[1]):
            keep = mask[:, j] > 0
            yj = y[keep, j]
            if len(np.unique(yj)) < 2:
                models.append(float(yj.mean()) if len(yj) else 0.0)
                continue
            models.append(LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(xt[keep], yj))

        def predict(images: np.ndarray) -> np.ndarray:
            x = scaler.transform(_pixels(images, args.logreg_size))
            return np.stack([np.full(len(x), m) if isinstance(m, float) else m.predict_proba(x)[:, 1]
                             for m in models], axis=1)
        return predict

    fits = {c: fit(c) for c in args.logreg_c}
    best = max(fits, key=lambda c: _micro_auc(fits[c](val["image"]), val["labels"]))
    return fits[best]


def train_constant(train: dict) -> Callable:
    y, mask = _targets(train["labels"])
    prevalence = (y * mask).sum(0) / np.maximum(mask.sum(0), 1)
    return lambda images: np.broadcast_to(prevalence, (len(images), len(prevalence))).copy()


def train_student(args, seed: int, work: Path) -> tuple[Callable, dict]:
    import student
    from kdistill import config as cfglib
    from kdistill.data.prepare import load_prepared
    from student.train import StudentTrainConfig, train
    from student.train_data import load_tokenizer

    raw = cfglib.read_yaml(args.config) if args.config else {}
    section = "student" if "student" in (raw or {}) else None
    cfg = cfglib.load(StudentTrainConfig, args.config, args.student_overrides, section=section)
    cfg = dataclasses.replace(cfg, max_steps=args.steps, batch_size=args.batch_size, num_threads=args.threads,
                              eval_every=args.eval_every, save_every=0, tensorboard=False, resume=False)
    prepared = load_prepared(args.prepared)
    rationales = None
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
        if cfg.needs_rationales:
            from teacher.cache import STUDENT_COLUMNS, load_rationales

            if not args.rationales:
                raise SystemExit("the student's recipe needs the teacher's rationales: give --rationales")
            rationales = load_rationales(args.rationales, STUDENT_COLUMNS)
    else:  # no teacher: classification only, with a tokenizer made from the reports (decoder unused)
        from student.synthetic import make_tokenizer

        tokenizer = make_tokenizer(prepared)
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, rep=0.0, kd=0.0, emb=0.0, tok=0.0))
    out = work / f"student_seed{seed}"
    metrics = train(cfg, out, prepared, tokenizer, rationales, tokenizer_dir=args.tokenizer,
                    rationale_path=args.rationales, seed=seed)
    model = student.load(out)
    info = {"recipe": "full" if cfg.needs_rationales or cfg.loss.rep else "classification only",
            "map_grid": model.cfg.map_grid, "tower": model.visual.family, "vision_model": model.cfg.vision_model,
            "student_wall_s": metrics["wall_s"]}

    def predict(images: np.ndarray) -> np.ndarray:
        return model.predict(list(images), batch_size=64, texts=False)["probs"]
    return predict, info


# ----------------------------------------------------------------------------- scoring and the table

def score(probs: np.ndarray, labels: np.ndarray, n_bootstrap: int) -> dict[str, float]:
    from eval.classification import auc_metrics, bootstrap_auc_ci

    y, mask = _targets(labels)
    auc = auc_metrics(probs, y, mask)
    ci = bootstrap_auc_ci(probs, y, mask, n_bootstrap=n_bootstrap, seed=0)
    out = {}
    for kind in ("micro", "macro"):
        key = f"auc_{kind}_14"
        out[f"{kind}_auc"] = float(auc.get(key, math.nan))
        out[f"{kind}_ci"] = [float(ci.get(f"{key}_ci_low", math.nan)), float(ci.get(f"{key}_ci_high", math.nan))]
    return out


def summarise(results: dict[str, dict[str, Any]], sets: list[str]) -> dict[str, dict[str, Any]]:
    summary = {}
    for name, by_seed in results.items():
        runs = list(by_seed.values())
        row: dict[str, Any] = {"seeds": len(runs), "train_s": float(np.mean([r["train_s"] for r in runs])),
                               "train_s_by_seed": {k: round(float(r["train_s"]), 1) for k, r in by_seed.items()}}
        threads = sorted({r["threads"] for r in runs if "threads" in r})
        if threads:  # seeds timed with different thread counts: their mean time compares only roughly
            row["threads"] = threads
        for s in sets:
            for kind in ("micro", "macro"):
                vals = np.array([r["sets"][s][f"{kind}_auc"] for r in runs])
                cis = np.array([r["sets"][s][f"{kind}_ci"] for r in runs])
                row[f"{s}/{kind}_auc"] = float(vals.mean())
                row[f"{s}/{kind}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                row[f"{s}/{kind}_ci"] = [float(cis[:, 0].mean()), float(cis[:, 1].mean())]
        summary[name] = row
    return summary


def print_table(summary: dict[str, dict[str, Any]], sets: list[str]) -> None:
    cols = [f"{s} {k}-AUC" for s in sets for k in ("micro", "macro")]
    print("| model | seeds | train s | " + " | ".join(cols) + " |")
    print("| --- " * (3 + len(cols)) + "|")
    for name, row in summary.items():
        cells = []
        for s in sets:
            for k in ("micro", "macro"):
                lo, hi = row[f"{s}/{k}_ci"]
                cells.append(f"{row[f'{s}/{k}_auc']:.3f} ± {row[f'{s}/{k}_sd']:.3f} [{lo:.3f}, {hi:.3f}]")
        print(f"| {name} | {row['seeds']} | {row['train_s']:.0f} | " + " | ".join(cells) + " |")


def combine(files: list[str], out: Path) -> int:
    """One table from several runs on the same data and steps (each run one model or seed)."""
    from kdistill.io import write_json

    runs = [json.loads(Path(f).read_text()) for f in files]
    for key in ("steps", "batch_size", "sets", "train_studies"):
        if len({json.dumps(r[key]) for r in runs}) != 1:
            raise SystemExit(f"--combine: the runs differ in {key}: {[r[key] for r in runs]}")
    merged: dict[str, dict[str, Any]] = {}
    for f, r in zip(files, runs):
        for name, by_seed in r["per_seed"].items():
            twice = sorted(set(by_seed) & set(merged.get(name, {})))
            if twice:  # two student recipes under one name would be averaged into one row
                raise SystemExit(f"--combine: {f} has {name} seeds {twice} again; name each recipe's row (--name)")
            merged.setdefault(name, {}).update({k: {"threads": r["threads"], **v} for k, v in by_seed.items()})
    sets = list(runs[0]["sets"])
    summary = summarise(merged, sets)
    print_table(summary, sets)
    first = runs[0]
    write_json(out, {**{k: first[k] for k in ("what", "steps", "batch_size", "threads", "sets", "train_studies",
                                              "cpu_count", "torch")},
                     "command": [r["command"] for r in runs], "seeds": sorted({s for b in merged.values() for s in b}),
                     "summary": summary, "per_seed": merged,
                     "student": {k: v for r in runs for k, v in r.get("student", {}).items()}})
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--combine", nargs="+", help="merge the per-seed results of earlier runs' JSON files "
                                               "(run models in parallel, one file each) into --out, and print the table")
    p.add_argument("--prepared", help="prepared cache: train / validate / test splits")
    p.add_argument("--heldout", nargs="*", default=[], help="prepared caches scored on all their studies")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--name", default="student", help="the student's row in the table (e.g. its tower and recipe), "
                                                     "so that --combine keeps several students apart")
    p.add_argument("--config", help="run config whose student section trains the student (configs/demo.yaml)")
    p.add_argument("--tokenizer", help="the teacher folder: the student trains its full recipe")
    p.add_argument("--rationales", help="the teacher's rationale cache (with --tokenizer)")
    p.add_argument("--steps", type=int, help="optimizer steps for every model (default: the student config's)")
    p.add_argument("--batch-size", type=int, help="default: the student config's")
    p.add_argument("--eval-every", type=int, help="default: the student config's")
    p.add_argument("--lr", type=float, default=1e-3, help="the CNNs' peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--cnn-augment", action="store_true", help="the CNNs train with the student's augmentation")
    p.add_argument("--cnn-bf16", action="store_true", help="the CNNs train under bf16 autocast (CPU)")
    p.add_argument("--logreg-size", type=int, default=32)
    p.add_argument("--logreg-c", nargs="+", type=float, default=[0.001, 0.01, 0.1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers.json"))
    p.add_argument("student_overrides", nargs="*", help="key=value overrides of the student section")
    return p


def _train_and_score(name, seed, args, train, val, sets, student_cfg, work, extra) -> dict[str, Any]:
    """Trains one model on one seed and scores it on every set, with its wall time and the load around it."""
    started, load_start = time.time(), os.getloadavg()
    if name == "student":
        predict, extra[f"{args.name}/{seed}"] = train_student(args, seed, work)
    elif name == "logreg":
        predict = train_logreg(train, val, args, seed)
    elif name == "constant":
        predict = train_constant(train)
    else:
        predict = train_cnn(name, train, val, args, seed, student_cfg.augment if args.cnn_augment else None)
    seconds = time.time() - started
    scored = {s: score(predict(d["image"]), d["labels"], args.bootstrap) for s, d in sets.items()}
    # the 1/5/15-minute load averages around the training: other jobs on the cores slow it
    return {"train_s": seconds, "threads": args.threads, "sets": scored,
            "load_avg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}}


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_intermixed_args(argv)

    if args.combine:
        return combine(args.combine, Path(args.out))
    if not args.prepared:
        p.error("--prepared is required (or --combine)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from kdistill import config as cfglib
    from kdistill.io import write_json
    from student.train import StudentTrainConfig

    torch.set_num_threads(args.threads)
    raw = cfglib.read_yaml(args.config) if args.config else {}
    student_cfg = cfglib.load(StudentTrainConfig, args.config, args.student_overrides,
                              section="student" if "student" in (raw or {}) else None)
    args.steps = args.steps or student_cfg.max_steps
    args.batch_size = args.batch_size or student_cfg.batch_size
    args.eval_every = args.eval_every or student_cfg.eval_every
    train, val = _load(args.prepared, ("train",)), _load(args.prepared, ("validate",))
    sets = {"test": _load(args.prepared, ("test",))}
    for h in args.heldout:
        sets[f"heldout:{Path(h).parent.name if Path(h).name.startswith('prepared') else Path(h).name}"] = _load(h)
    rows = {m: args.name if m == "student" else m for m in args.models}
    results: dict[str, dict[str, Any]] = {rows[m]: {} for m in args.models}
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="peers_") as work:
        for seed in args.seeds:
            for name in args.models:
                run = _train_and_score(name, seed, args, train, val, sets, student_cfg, Path(work), extra)
                results[rows[name]][str(seed)] = run
                print(f"seed {seed} {rows[name]:12s} {run['train_s']:7.1f} s  " + "  ".join(
                    f"{s} micro {v['micro_auc']:.3f}" for s, v in run["sets"].items()), flush=True)
    summary = summarise(results, list(sets))
    print_table(summary, list(sets))
    write_json(Path(args.out), {
        "what": "finding classification: the student beside the models a user would pick instead",
        "command": "python benchmarks/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps, "batch_size": args.batch_size, "threads": args.threads, "seeds": args.seeds,
        "sets": {s: int(len(d["labels"])) for s, d in sets.items()}, "train_studies": int(len(train["labels"])),
        "summary": summary, "per_seed": results, "student": extra,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
