"""Student training throughput: a full step (all loss terms) against a classification-only step on the
same tower, and the data loader against the model.

    .venv/bin/python benchmarks/student_train.py [--n 256] [--batch-size 32] [--steps 8] [--size 128]
    .venv/bin/python benchmarks/student_train.py --egl [--config configs/demo.yaml] [--threads 1]

``--egl``: the cost of explanation-guided learning: one full step (the config's recipe) against the
same step plus each EGL term (loss.ha, loss.dal, loss.gcam_dice, all three), as ratios, and L_DAL's
time (forward + backward) and memory for 14 vs 50 classes; writes benchmarks/results/student_train_egl.json.

Data are synthetic (student.synthetic: prepared-cache columns at --size px, a BPE tokenizer, a
rationale cache), or the real ones with --prepared/--tokenizer/--rationales. Prints a table and
writes benchmarks/results/student_train.json. Figures are ratios measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from kdistill import config as cfglib


def _steps_per_s(model, optimizer, batches, weights, augment_cfg, steps, device) -> float:
    from student.augment import augment
    from student.losses import student_loss

    g = torch.Generator().manual_seed(0)

    def one(batch):
        inputs = {"images": augment(batch["images"], augment_cfg, g)}
        if weights.rep:
            inputs["report_ids"] = batch["report_ids"]
        if weights.kd or weights.emb:
            inputs.update(rationale_ids=batch["rationale_ids"], rationale_mask=batch["rationale_mask"],
                          with_embedding=bool(weights.emb))
        if weights.gcam_dice:
            inputs["with_features"] = True
        out = model(**inputs)
        loss, _ = student_loss(out, batch, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for b in batches[:2]:  # warm-up
        one(b)
    _sync(device)
    t = time.perf_counter()
    for i in range(steps):
        one(batches[i % len(batches)])
    _sync(device)
    return steps / (time.perf_counter() - t)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="synthetic training studies")
    p.add_argument("--size", type=int, default=128, help="synthetic image size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--model", default="{}", help="JSON overrides of StudentConfig")
    p.add_argument("--config", help="YAML whose student section's 'model' and 'augment' are used (e.g. configs/demo.yaml)")
    p.add_argument("--prepared")
    p.add_argument("--tokenizer")
    p.add_argument("--rationales")
    p.add_argument("--rounds", type=int, default=3, help="--egl: interleaved rounds (the best of them counts)")
    p.add_argument("--egl", action="store_true", help="measure the EGL terms' cost (see the module docstring)")
    p.add_argument("--out", default=None, help="JSON result (default benchmarks/results/student_train[_egl].json)")
    return p


def _inputs(args):
    """(prepared cache, tokenizer, rationale cache, a description): the caches named on the command
    line, or synthetic ones."""
    if args.prepared:
        from kdistill.data.prepare import load_prepared as load_prepared_cache
        from teacher.cache import STUDENT_COLUMNS, load_rationales
        from student.train_data import load_tokenizer

        return (load_prepared_cache(args.prepared), load_tokenizer(args.tokenizer),
                load_rationales(args.rationales, STUDENT_COLUMNS), args.prepared)
    from student.synthetic import make_prepared, make_rationales, make_tokenizer

    prep = make_prepared(args.n, 16, size=args.size, rois=args.egl)
    return prep, make_tokenizer(prep), make_rationales(prep), f"synthetic n={args.n} size={args.size}"


def _print_table(result: dict, loader_ips: float, full_ips: float, cls_ips: float) -> None:
    print(f"student training throughput ({result['device']}, {result['cpu_threads']} threads, batch "
          f"{result['batch_size']}, {result['image_size'][0]}px, {result['parameters'] / 1e6:.2f} M params, "
          f"{result['data']})")
    print(f"{'what':<34}{'images/s':>12}")
    print(f"{'data loader (collate, no model)':<34}{loader_ips:>12.1f}")
    print(f"{'full step (cls+report+KD+emb)':<34}{full_ips:>12.1f}")
    print(f"{'classification-only step':<34}{cls_ips:>12.1f}")
    print(f"full / classification-only = {result['ratios']['full_over_classification_only']:.3f}   "
          f"loader / full step = {result['ratios']['data_loader_over_full_step']:.2f}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.out = args.out or ("benchmarks/results/student_train_egl.json" if args.egl else "benchmarks/results/student_train.json")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    from student.augment import AugmentConfig
    from student.config import StudentConfig
    from student.data import Collate, StudyDataset, rationale_index
    from student.losses import LossWeights
    from student.model import create_student
    from student.text import TokenSpec

    prep, tok, rat, source = _inputs(args)
    index, _ = rationale_index(rat)
    model_dict, augment_dict = {}, {}
    if args.config:
        data = cfglib.read_yaml(args.config)
        section = data.get("student", data) or {}
        model_dict, augment_dict = section.get("model", {}) or {}, section.get("augment", {}) or {}
    augment_cfg = cfglib.from_dict(AugmentConfig, augment_dict)
    mcfg = cfglib.from_dict(StudentConfig, cfglib.merge(model_dict, json.loads(args.model)))
    spec = TokenSpec(tok, mcfg.report_prefix, mcfg.rationale_prefix)
    ds = StudyDataset(prep["train"], spec, index)
    mcfg.teacher_embed_dim = int(ds.teacher_embedding.shape[1])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_student(mcfg, tok).to(device).train()
    if args.egl:
        region_report = ds.attach_regions(model.grid)
    collate = Collate(model.tokens, model.image_size, mcfg.max_text_len, with_rationales=True, grid=model.grid)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                                         num_workers=args.workers, drop_last=True)

    # data loader alone
    t = time.perf_counter()
    batches, n_img = [], 0
    for b in loader:
        batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})
        n_img += len(b["images"])
        if len(batches) >= args.steps:
            break
    loader_ips = n_img / (time.perf_counter() - t)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if args.egl:
        return _egl(args, model, opt, batches, augment_cfg, device, source, region_report, loader_ips)
    full_w = LossWeights()
    cls_w = LossWeights(rep=0, kd=0, emb=0)
    # both steps with the config's augmentation (it runs on the batch, inside the step)
    full_ips = _steps_per_s(model, opt, batches, full_w, augment_cfg, args.steps, device) * args.batch_size
    cls_ips = _steps_per_s(model, opt, batches, cls_w, augment_cfg, args.steps, device) * args.batch_size
    params = sum(p.numel() for p in model.parameters())
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(),
        "data": source,
        "image_size": list(model.image_size),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "parameters": params,
        "max_text_len": mcfg.max_text_len,
        "report_context": mcfg.report_context,
        "augment": augment_cfg.enabled,
        "images_per_s": {"data_loader": round(loader_ips, 1), "full_step": round(full_ips, 1),
                         "classification_only_step": round(cls_ips, 1)},
        "ratios": {"full_over_classification_only": round(full_ips / cls_ips, 3),
                   "data_loader_over_full_step": round(loader_ips / full_ips, 2)},
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    _print_table(result, loader_ips, full_ips, cls_ips)
    out = Path(args.out)
    cfglib.write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _dal_cost(classes: int, grid: tuple[int, int], batch: int, device, repeats: int = 20) -> dict[str, float]:
    """L_DAL forward + backward on random maps (batch, classes, *grid): ms per call, and the bytes of
    its intermediates (the normalised maps and the (B, K, K) Gram matrix; on CUDA the measured peak)."""
    from student.losses import dal_loss

    maps = torch.rand(batch, classes, *grid, device=device, requires_grad=True)
    dal_loss(maps).backward()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t = time.perf_counter()
    for _ in range(repeats):
        maps.grad = None
        dal_loss(maps).backward()
    _sync(device)
    ms = (time.perf_counter() - t) / repeats * 1e3
    analytic = 4 * (batch * classes * grid[0] * grid[1] + batch * classes * classes)
    out = {"classes": classes, "ms_fwd_bwd": round(ms, 3), "intermediate_bytes": analytic}
    if device.type == "cuda":
        out["cuda_peak_extra_bytes"] = int(torch.cuda.max_memory_allocated() - base)
    return out


def _egl(args, model, opt, batches, augment_cfg, device, source, region_report, loader_ips: float) -> int:
    """The EGL terms' cost on top of the config's full step, measured in one run, interleaved."""
    import dataclasses

    from student.losses import LossWeights

    base = LossWeights()
    variants = {"full step": base, "+ ha": dataclasses.replace(base, ha=1.0),
                "+ dal": dataclasses.replace(base, dal=0.1), "+ gcam_dice": dataclasses.replace(base, gcam_dice=0.5),
                "+ ha + dal + gcam_dice": dataclasses.replace(base, ha=1.0, dal=0.1, gcam_dice=0.5),
                # loss.gcam_findings=1: one sampled finding's create_graph backward a step (unbiased estimate)
                "+ gcam_dice K=1": dataclasses.replace(base, gcam_dice=0.5, gcam_findings=1),
                "+ ha + dal + gcam_dice K=1": dataclasses.replace(base, ha=1.0, dal=0.1, gcam_dice=0.5, gcam_findings=1)}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):  # interleaved rounds: a drifting machine load hits every variant alike
        for name, w in variants.items():
            rates[name].append(_steps_per_s(model, opt, batches, w, augment_cfg, args.steps, device))
    best = {k: max(v) for k, v in rates.items()}
    ratios = {k: round(best["full step"] / v, 3) for k, v in best.items()}
    grid = tuple(model.grid)
    dal = [_dal_cost(k, grid, args.batch_size, device) for k in (14, 50)]
    result = {
        "benchmark": "student_train_egl",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(), "data": source, "image_size": list(model.image_size),
        "map_grid": list(grid), "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
        "regions": region_report,
        "steps_per_s_best": {k: round(v, 3) for k, v in best.items()},
        "step_time_ratio_vs_full": ratios,  # time with the term / time without
        # the loader with region masks (collate, no model) over the step with every EGL term
        "data_loader_images_per_s": round(loader_ips, 1),
        "data_loader_over_egl_step": round(loader_ips / (best["+ ha + dal + gcam_dice"] * args.batch_size), 2),
        "dal_cost": dal,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    print(f"EGL cost ({result['device']}, {result['cpu_threads']} threads, batch {args.batch_size}, "
          f"{model.image_size[0]}px, map grid {grid}, {source})")
    print(f"{'step':<28}{'steps/s':>10}{'time ratio':>12}")
    for k in variants:
        print(f"{k:<28}{best[k]:>10.2f}{ratios[k]:>12.3f}")
    print(f"data loader with regions / step with every EGL term = {result['data_loader_over_egl_step']:.2f}")
    for d in dal:
        print(f"L_DAL {d['classes']:>2} classes: {d['ms_fwd_bwd']:.3f} ms fwd+bwd, intermediates {d['intermediate_bytes'] / 1024:.1f} KiB"
              + (f", CUDA peak +{d['cuda_peak_extra_bytes'] / 1024:.1f} KiB" if "cuda_peak_extra_bytes" in d else ""))
    out = Path(args.out)
    cfglib.write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
