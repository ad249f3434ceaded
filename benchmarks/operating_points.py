"""Operating-point policies on small validation splits: F1-optimal against prevalence-matched.

    kdistill data synth --out runs/heldout_phantom --n 1000 --seed 1 corpus_mb=0.1
    kdistill data prepare runs/heldout_phantom --size 128 --out runs/heldout_phantom/prepared
    .venv/bin/python benchmarks/operating_points.py --checkpoint runs/demo/student \
        --heldout runs/heldout_phantom/prepared [--demo runs/demo/prepared] [--draws 200 --val 61]

The checkpoint scores every study of a held-out prepared cache (all splits pooled; the phantom of
another seed, never trained on). Each draw takes ``--val`` studies as the validation split (the
demo has 61), chooses thresholds there with each policy (``kdistill.scoring.choose_thresholds``),
and scores the decisions on the other studies: micro and macro F1 (macro over findings with a
positive), positive calls per labelled positive, the number of findings called positive in more
than half of the studies, and the number of thresholds below 0.05. With ``--demo`` the demo's own
validate -> test split is scored too. Prints a table (mean ± sd over draws) and writes
benchmarks/results/operating_points.json.

Measured (demo checkpoint, phantom seed 1, 1,000 studies, 200 draws of 61):

| policy | micro-F1 | macro-F1 | calls / positive | findings called in > half | thresholds < 0.05 |
| --- | --- | --- | --- | --- | --- |
| f1 | 0.438 ± 0.045 | 0.369 ± 0.015 | 2.05 ± 0.39 | 2.3 ± 1.3 | 2.9 ± 1.1 |
| prevalence | 0.545 ± 0.018 | 0.361 ± 0.014 | 0.98 ± 0.10 | 0.0 ± 0.0 | 1.6 ± 0.8 |
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdistill import scoring  # noqa: E402
from kdistill.io import write_json  # noqa: E402
from kdistill.labels import apply_policy  # noqa: E402

POLICIES = scoring.THRESHOLD_POLICIES


def predict_split(model, prepared: Path, splits: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from kdistill.data.prepare import load_prepared, read_batch

    data = load_prepared(prepared)
    probs, labels = [], []
    for name in splits:
        b = read_batch(data[name], slice(0, len(data[name])), ["image", "labels"])
        probs.append(model.predict(b["image"], texts=False)["probs"])
        labels.append(b["labels"])
    return np.concatenate(probs), np.concatenate(labels)


def decision_figures(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, t: np.ndarray) -> dict[str, float]:
    d, y = probs >= t, y.astype(bool)
    tp, fp, fn = ((d & y & mask).sum(0), (d & ~y & mask).sum(0), (~d & y & mask).sum(0))
    has = (tp + fn) > 0
    return {"micro_f1": float(2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)),
            "macro_f1": float(np.mean(2 * tp[has] / np.maximum(2 * tp[has] + fp[has] + fn[has], 1))),
            "calls_per_positive": float((d & mask).sum() / max((y & mask).sum(), 1)),
            "findings_called_in_over_half": float(np.sum((d & mask).sum(0) > 0.5 * mask.sum(0))),
            "thresholds_below_0.05": float(np.sum(t < 0.05))}


def main(argv: list[str] | None = None) -> int:
    import torch

    import student

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="student checkpoint folder")
    parser.add_argument("--heldout", type=Path, required=True, help="prepared cache of held-out studies")
    parser.add_argument("--demo", type=Path, help="the demo's prepared cache: also score its validate -> test")
    parser.add_argument("--draws", type=int, default=200, help="random validation splits")
    parser.add_argument("--val", type=int, default=61, help="studies per validation split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "operating_points.json",
                        help="JSON to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = student.load(args.checkpoint)
    probs, labels = predict_split(model, args.heldout, ["train", "validate", "test"])
    y, mask = apply_policy(labels, uncertain="ignore", blank="zeros")
    mask = mask.astype(bool)
    rng = np.random.default_rng(args.seed)
    runs = {p: [] for p in POLICIES}
    for _ in range(args.draws):
        order = rng.permutation(len(y))
        v, e = order[:args.val], order[args.val:]
        for policy in POLICIES:
            t, _, _ = scoring.choose_thresholds(probs[v], y[v], mask[v], policy=policy)
            runs[policy].append(decision_figures(probs[e], y[e], mask[e], t))
    result = {"checkpoint": str(args.checkpoint), "heldout": str(args.heldout), "studies": int(len(y)),
              "draws": args.draws, "val": args.val, "seed": args.seed, "machine": platform.platform(), "policies": {}}
    keys = list(runs[POLICIES[0]][0])
    print(f"{len(y)} held-out studies, {args.draws} draws of {args.val} validation studies; mean ± sd")
    print("| policy | " + " | ".join(keys) + " |")
    for policy in POLICIES:
        table = np.array([[r[k] for k in keys] for r in runs[policy]])
        result["policies"][policy] = {k: {"mean": float(m), "sd": float(s)}
                                      for k, m, s in zip(keys, table.mean(0), table.std(0))}
        print(f"| {policy} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(table.mean(0), table.std(0))) + " |")
    if args.demo:
        pv, lv = predict_split(model, args.demo, ["validate"])
        pt, lt = predict_split(model, args.demo, ["test"])
        (yv, mv), (yt, mt) = apply_policy(lv, "ignore", "zeros"), apply_policy(lt, "ignore", "zeros")
        result["demo_validate_to_test"] = {}
        for policy in POLICIES:
            t, _, _ = scoring.choose_thresholds(pv, yv, mv, policy=policy)
            figures = decision_figures(pt, yt, mt.astype(bool), t)
            result["demo_validate_to_test"][policy] = figures
            print(f"demo validate -> test, {policy}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
