"""Teacher generation speed: the full ``teacher generate`` path vs a naive loop.

The naive loop builds each study's prompt and calls ``model.generate`` on it alone (greedy,
same model with the LoRA merged, same max_new_tokens). The full path is
``teacher.generate.generate_rationales``: dedup, continuous batching over paged KV
(``teacher.decode``), labelling every rationale, embeddings, shards and the final dataset — all
timed, loading the teacher included. Both run on the same studies in one process with the same
torch threads, after the libraries are imported (the naive loop's model is loaded outside its
timing), so the ratio is fair to the naive loop. Retries are off in both (max_retries=0): the
figure is decoding speed, not how often the labeler disagrees.

    .venv/bin/python benchmarks/teacher_generate.py --run runs/demo [--n 0] [--threads 2]

``--run`` is a folder written by ``kdistill run configs/demo.yaml`` (its ``data/`` and
``teacher/``), or give ``--data-root`` and ``--teacher``. Prints a table and writes
benchmarks/results/teacher_generate.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "teacher_generate.json"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def naive_loop(studies, teacher_dir, max_new_tokens: int, max_prompt: int):
    """One study at a time: prompt -> model.generate -> decode. Returns (texts, tokens, seconds, cpu seconds)."""
    from teacher.modeling import load_teacher
    from teacher.prompts import prompt_for_study

    model, tok, meta = load_teacher(teacher_dir)
    mode = meta.get("prompt_mode", "labels+report")
    count = lambda text: len(tok.encode(text, add_special_tokens=False)) + 1  # noqa: E731
    texts, tokens = [], 0
    started, cpu = time.perf_counter(), _cpu()
    with torch.no_grad():
        for study in studies:
            prompt = prompt_for_study(study, count, max_prompt, mode).text
            ids = torch.tensor([[tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = out[0, ids.shape[1]:].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            tokens += len(new)
            texts.append(tok.decode(new, skip_special_tokens=True).strip())
    return texts, tokens, time.perf_counter() - started, _cpu() - cpu


def _warm_imports(teacher_dir) -> None:
    """Import what both paths use (transformers' model classes, peft, the labeler, datasets) so
    neither timing pays for a cold interpreter."""
    import datasets  # noqa: F401

    from kdistill.labeler import label_reports
    from teacher.modeling import load_teacher

    load_teacher(teacher_dir)
    label_reports(["No acute cardiopulmonary process."])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo", help="run folder holding data/ and teacher/")
    parser.add_argument("--data-root")
    parser.add_argument("--teacher")
    parser.add_argument("--n", type=int, default=0, help="studies (train + validate, first N; 0: all)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 64], help="one full-path run per size")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both paths (this machine: 2 cores)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from teacher import generate as gen
    from teacher.cache import load_rationales

    from kdistill.data.sources import open_source

    root = Path(args.data_root or Path(args.run) / "data")
    teacher_dir = Path(args.teacher or Path(args.run) / "teacher")
    studies = gen.load_study_list(open_source("mimic", root), ["train", "validate"], limit=args.n)
    _warm_imports(teacher_dir)
    runs = []
    for batch_size in args.batch_size:
        cfg = gen.TeacherGenerateConfig(batch_size=batch_size, max_new_tokens=args.max_new_tokens, max_retries=0,
                              cpu=True, num_threads=args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            started, cpu = time.perf_counter(), _cpu()
            summary = gen.generate_rationales(studies, teacher_dir, Path(tmp) / "rationales", cfg)
            full_s, full_cpu = time.perf_counter() - started, _cpu() - cpu
            full_texts = load_rationales(Path(tmp) / "rationales")["rationale"]
        runs.append((batch_size, summary, full_s, full_texts, full_cpu))
    max_prompt = summary["context"] - args.max_new_tokens  # the same prompt budget as the full path
    naive_texts, naive_tokens, naive_s, naive_cpu = naive_loop(studies, teacher_dir, args.max_new_tokens, max_prompt)
    batch_size, summary, full_s, full_texts, full_cpu = min(runs, key=lambda r: r[2])  # the best batch size

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": args.threads,
        "studies": len(studies),
        "unique_prompts": summary["unique_prompts_this_run"],
        "batch_size": batch_size,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "all_batch_sizes": {str(b): {"seconds": round(t, 2), "cpu_seconds": round(c, 2),
                                     "rows_per_s": round(len(studies) / t, 2),
                                     "identical_outputs": sum(x == y for x, y in zip(texts, naive_texts)) / len(studies)}
                            for b, _, t, texts, c in runs},
        "max_new_tokens": args.max_new_tokens,
        "naive": {"seconds": round(naive_s, 2), "cpu_seconds": round(naive_cpu, 2),
                  "rows_per_s": round(len(studies) / naive_s, 2),
                  "tokens_per_s": round(naive_tokens / naive_s, 1)},
        "full": {"seconds": round(full_s, 2), "cpu_seconds": round(full_cpu, 2),
                 "rows_per_s": round(len(studies) / full_s, 2),
                 "tokens_per_s": round(summary["generated_tokens"] / full_s, 1), "generated_tokens": summary["generated_tokens"]},
        "speedup_rows_per_s": round(naive_s / full_s, 2),
        "speedup_cpu_seconds": round(naive_cpu / full_cpu, 2),  # steadier on a shared machine
        "identical_outputs": sum(a == b for a, b in zip(naive_texts, full_texts)) / len(studies),
        "consistent_fraction": summary["consistent_fraction"],
    }
    print(f"{'path':<10}{'seconds':>10}{'rows/s':>10}{'tokens/s':>11}")
    print(f"{'naive':<10}{result['naive']['seconds']:>10}{result['naive']['rows_per_s']:>10}"
          f"{result['naive']['tokens_per_s']:>11}")
    for b, _, t, _, _ in runs:
        print(f"{'full b=' + str(b):<10}{round(t, 2):>10}{round(len(studies) / t, 2):>10}")
    print(f"{'full best':<10}{result['full']['seconds']:>10}{result['full']['rows_per_s']:>10}"
          f"{result['full']['tokens_per_s']:>11}")
    print(f"speed-up (rows/s): {result['speedup_rows_per_s']}x wall, {result['speedup_cpu_seconds']}x CPU seconds, "
          f"on {len(studies)} studies "
          f"({result['unique_prompts']} unique prompts); identical outputs: {result['identical_outputs']:.1%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
