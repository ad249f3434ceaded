"""Saliency methods on a task with a known answer: which method points, is faithful, is stable?

A tiny CNN is trained (seconds, CPU) on 32x32 synthetic images: finding 0 = a bright blob at
a random place, finding 1 = a hollow square (a distractor: another finding's region). The
blob's disc is the ground-truth region. On held-out positives for finding 0 we score
Grad-CAM, occlusion, their dual-evidence fusion, and two model-free references (an edge
detector and random maps) with ``eval.saliency.saliency_benchmark``; runtimes are reported
as ratios to Grad-CAM measured in this one run.

    .venv/bin/python benchmarks/saliency_benchmark.py [--quick]

Prints a table and writes benchmarks/results/saliency_benchmark.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.saliency import SaliencyBenchConfig, saliency_benchmark, scalar_metrics  # noqa: E402
from kdistill.io import write_text_atomic  # noqa: E402
from kdistill.saliency import FusedAttribution, GradCAM, OcclusionAttribution, attribution_method  # noqa: E402

SIZE = 32


def make_data(n: int, seed: int):
    """Images, labels (n, 14) and the blob / square masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = rng.normal(0.3, 0.08, (n, SIZE, SIZE))
    labels = np.zeros((n, 14), np.float32)
    blob = np.zeros((n, SIZE, SIZE), bool)
    square = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        if rng.random() < 0.5:
            cy, cx, r = *rng.integers(7, SIZE - 7, 2), rng.uniform(3, 5)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            images[i] += 0.6 * np.exp(-d2 / (2 * (r / 1.5) ** 2))
            blob[i] = d2 <= r ** 2
            labels[i, 0] = 1
        if rng.random() < 0.5:
            y0, x0, s = *rng.integers(2, SIZE - 12, 2), rng.integers(7, 10)
            ring = np.zeros((SIZE, SIZE), bool)
            ring[y0:y0 + s, x0:x0 + s] = True
            ring[y0 + 2:y0 + s - 2, x0 + 2:x0 + s - 2] = False
            images[i][ring] += 0.4
            square[i] = ring
            labels[i, 1] = 1
    x = torch.tensor(images, dtype=torch.float32)[:, None]
    return x, torch.tensor(labels), blob, square


def make_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 14))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss = loss_fn(model(x[idx])[:, :2], y[idx, :2])
            loss.backward()
            opt.step()
    return float(loss.detach())


def edge_detector(model, images, finding):
    x = images[:, 0].detach().cpu().numpy()
    gy, gx = np.gradient(x, axis=(1, 2))
    return np.hypot(gx, gy)


def random_maps(model, images, finding):
    gen = np.random.default_rng(int(images.sum().item() * 1000) % 2**32)
    return gen.random((images.shape[0], *images.shape[-2:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs (smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "saliency_benchmark.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    n_train, n_eval, epochs = (600, 16, 4) if args.quick else (2000, 48, 8)

    x, y, _, _ = make_data(n_train, args.seed)
    model = make_model()
    t0 = time.perf_counter()
    final_loss = train(model, x, y, epochs, args.seed)
    train_s = time.perf_counter() - t0
    model.eval()

    xt, yt, blob, square = make_data(4 * n_eval, args.seed + 1)
    with torch.no_grad():
        probs = torch.sigmoid(model(xt)[:, :2])
    accuracy = float(((probs > 0.5).float() == yt[:, :2]).float().mean())
    pos = torch.nonzero(yt[:, 0] == 1)[:n_eval, 0]
    images, masks, others = xt[pos], blob[pos.numpy()], square[pos.numpy()]

    methods = {
        "gradcam": attribution_method(GradCAM, target_layers="5"),
        "occlusion": attribution_method(OcclusionAttribution, window=6, stride=2, baseline="mean"),
        "fused_dea": attribution_method(FusedAttribution.from_model, target_layers="5", window=6, stride=2,
                                        baseline="mean"),
        "edge_detector": edge_detector,
        "random": random_maps,
    }
    cfg = SaliencyBenchConfig(pointing_tolerance=0, steps=20, baseline="mean", random_orders=3,
                              noise_sigma=0.05, shift_px=2, seed=args.seed)
    results, seconds = {}, {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        method(model, images, 0)
        seconds[name] = time.perf_counter() - t0
        results[name] = scalar_metrics(saliency_benchmark(model, images, masks, 0, method, others, cfg))
        results[name]["time_ratio_vs_gradcam"] = seconds[name] / seconds["gradcam"]

    columns = ["pointing_game", "energy_pointing_game", "dice", "leakage_other", "deletion_auc", "deletion_gap",
               "insertion_gap", "noise_spearman", "shift_ssim", "randomisation_spearman", "time_ratio_vs_gradcam"]
    short = ["point", "energy", "dice", "leak_oth", "del_auc", "del_gap", "ins_gap", "noise_rho", "shift_ssim",
             "rand_rho", "time_x"]
    print(f"tiny CNN: train {train_s:.1f}s, last loss {final_loss:.3f}, held-out accuracy {accuracy:.3f}; "
          f"{len(pos)} positives; chance energy {results['gradcam']['chance_energy']:.3f}")
    print(f"{'method':<14}" + "".join(f"{s:>11}" for s in short))
    for name, res in results.items():
        print(f"{name:<14}" + "".join(f"{res[c]:>11.3f}" for c in columns))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": "benchmarks/saliency_benchmark.py" + (" --quick" if args.quick else ""),
               "seed": args.seed, "n_eval_images": int(len(pos)), "held_out_accuracy": accuracy,
               "train_seconds": train_s, "config": dataclasses.asdict(cfg), "methods": results}
    write_text_atomic(out, json.dumps(payload, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
