"""The teacher on real report text: Indiana University chest X-ray reports (``iu_reports/dev.csv``).

1. The reports are split by a hash of their id into a train part (80%) and a held-out part.
2. Domain-adaptive pretraining: the teacher base (``--base``, e.g. a demo run's
   ``teacher/base``) continues pretraining on the phantom corpus's rationale pairs in ``report``
   mode whose reports are the IU train reports with the same findings (the findings read by the
   project's labeler), plus the IU train reports themselves as plain text.
3. LoRA on the same pairs (``report`` mode).
4. ``teacher generate`` in ``report`` mode for the held-out reports: the teacher reads each real
   report alone and must name and explain its findings.
5. Scored against the IU gold labels (NegBio's OpenI gold standard; only its 7 mapped findings
   are judged, see ``shared/realdata/SOURCES.md``): how often a rationale names every gold-positive
   finding and none of the gold-negative ones (``kdistill.labeler.consistency.is_consistent``
   on the gold columns), micro P/R/F1 of the findings it names; beside it the same figures for the
   project's labeler reading the report itself (the ceiling a rationale that restates the report
   reaches) and for a constant rationale naming nothing ("no acute process": right for every
   normal report).

    python benchmarks/teacher_iu.py --base runs/demo/teacher/base --corpus runs/demo/data/corpus/corpus.jsonl

Prints a table and writes benchmarks/results/teacher_iu.json.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IU = Path("/work/shared/realdata/iu_reports/dev.csv")
RESULTS = Path(__file__).parent / "results" / "teacher_iu.json"


def read_iu(path: Path) -> tuple[list, np.ndarray, list[int]]:
    """(Study rows, gold labels (n, 14) with NaN where not judged, indices of the judged columns)."""
    from kdistill.data.sections import extract_sections
    from kdistill.data.study import Study
    from kdistill.labels import FINDINGS

    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    studies, gold = [], []
    for row in rows:
        findings, impression = extract_sections(row["Reports"])
        held = int(hashlib.sha256(row["id"].encode()).hexdigest()[:8], 16) % 5 == 0
        studies.append(Study(study_id=row["id"], subject_id=row["id"], split="test" if held else "train",
                             image_paths=[], view="PA", findings=findings, impression=impression))
        gold.append([float(row[f]) if row.get(f, "") != "" else math.nan for f in FINDINGS])
    gold = np.asarray(gold, dtype=np.float64)
    judged = [i for i, f in enumerate(FINDINGS) if f != "No Finding" and not np.isnan(gold[:, i]).all()]
    return studies, gold, judged


class IUSource:
    """The slice of ``kdistill.data.sources.DataSource`` the teacher's report bank reads."""

    name, has_reports = "iu", True

    def __init__(self, studies):
        self.studies, self.root = studies, IU

    def load_studies(self, splits=None, **_):
        return [s for s in self.studies if splits is None or s.split in splits]


def gold_scores(labels: np.ndarray, gold: np.ndarray, judged: list[int]) -> dict:
    """Exact agreement on the judged findings and micro P/R/F1 of the named findings there."""
    from kdistill.labeler.consistency import consistency_scores, is_consistent

    keep = np.full(labels.shape[1], np.nan)
    said, truth = keep[None].repeat(len(labels), 0), keep[None].repeat(len(labels), 0)
    said[:, judged], truth[:, judged] = labels[:, judged], gold[:, judged]
    truth = np.where(truth == 1.0, 1.0, np.where(np.isnan(truth), np.nan, 0.0))
    exact = [is_consistent(s, t) for s, t in zip(said, truth)]
    scores = consistency_scores(np.nan_to_num(said, nan=0.0), np.nan_to_num(truth, nan=0.0))
    return {"consistent_with_gold": round(float(np.mean(exact)), 4), "n": len(exact),
            "interval95": _wilson(sum(exact), len(exact)), **{k: round(v, 4) for k, v in scores.items()}}


def _wilson(k: int, n: int) -> list[float]:
    if not n:
        return [math.nan, math.nan]
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def build_teacher(args, studies, out: Path, label_fn) -> dict:
    from teacher.pretrain import TeacherPretrainConfig, pretrain
    from teacher.train import TeacherTrainConfig, train

    source = IUSource(studies)
    corpus = _dapt_corpus(Path(args.corpus), [s for s in studies if s.split == "train"], out / "corpus.jsonl")
    figures = {}
    started = time.perf_counter()
    figures["pretrain"] = pretrain(TeacherPretrainConfig(
        init=str(args.base), prompt_mode="report", max_steps=args.pretrain_steps, batch_size=16, lr=args.lr,
        warmup_steps=10, textbook_fraction=args.text_fraction, mixed_precision=args.mixed_precision,
        num_threads=args.threads, max_length=384), corpus, out / "base", label_fn=label_fn, data=source)
    figures["pretrain_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    figures["train"] = train(TeacherTrainConfig(
        prompt_mode="report", max_steps=args.lora_steps, batch_size=16, lr=2e-3, lora_r=16, lora_alpha=32,
        mixed_precision=args.mixed_precision, num_threads=args.threads, save_every=0, max_length=384),
        out / "base", corpus, out / "teacher", label_fn=label_fn, data=source)
    figures["train_s"] = round(time.perf_counter() - started, 1)
    return figures


def _dapt_corpus(phantom: Path, train_reports, path: Path) -> Path:
    """The phantom corpus plus each IU train report as a plain-text doc."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = phantom.read_text().splitlines()
    lines += [json.dumps({"kind": "textbook", "text": s.report, "findings": [], "attributes": {}})
              for s in train_reports if s.report.strip()]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="teacher base to continue from (a run's teacher/base)")
    parser.add_argument("--corpus", required=True, help="the phantom corpus (a run's data/corpus/corpus.jsonl)")
    parser.add_argument("--csv", default=str(IU))
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--lora-steps", type=int, default=150)
    parser.add_argument("--text-fraction", type=float, default=0.3, help="share of IU/textbook text in pretraining")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--max-retries", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="held-out reports to generate for (0: all)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--work", help="folder for the teacher and rationales (default: temporary)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from kdistill.labeler import label_reports
    from kdistill.labels import FINDINGS
    from teacher.cache import load_rationales
    from teacher.generate import TeacherGenerateConfig, generate_rationales

    studies, gold, judged = read_iu(Path(args.csv))
    labeler = label_reports([s.report for s in studies])
    for s, lab in zip(studies, labeler):
        s.labels = [float(v) for v in lab]
    held = [i for i, s in enumerate(studies) if s.split == "test"][: args.limit or None]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        figures = build_teacher(args, studies, work, label_reports)
        started = time.perf_counter()
        summary = generate_rationales([studies[i] for i in held], work / "teacher", work / "rationales",
                                      TeacherGenerateConfig(prompt_mode="report", max_retries=args.max_retries,
                                                            cpu=True, num_threads=args.threads, max_new_tokens=256))
        figures["generate_s"] = round(time.perf_counter() - started, 1)
        rows = load_rationales(work / "rationales").to_list()
    by_id = {r["study_id"]: r for r in rows}
    rationales = [by_id[studies[i].study_id]["rationale"] for i in held]
    g = gold[held]
    result = {
        "reports": {"train": sum(s.split == "train" for s in studies), "held_out": len(held)},
        "judged_findings": [FINDINGS[i] for i in judged],
        "rationale_vs_gold": gold_scores(label_reports(rationales), g, judged),
        "labeler_on_report_vs_gold": gold_scores(labeler[held], g, judged),
        "constant_normal_vs_gold": gold_scores(np.full((len(held), len(FINDINGS)), np.nan), g, judged),
        "consistent_with_labeler": summary["consistent_fraction"], "retried": summary["retried"],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "stages": {k: v for k, v in figures.items() if k.endswith("_s")},
        "pretrain_eval_loss": figures["pretrain"].get("eval_loss"), "train_eval_loss": figures["train"].get("eval_loss"),
        "examples": [{"id": studies[i].study_id, "report": studies[i].report, "rationale": t}
                     for i, t in list(zip(held, rationales))[:5]],
    }
    print(f"{'on the held-out IU reports':<34}{'gold-consistent':>16}{'95% interval':>18}{'P':>7}{'R':>7}{'F1':>7}")
    for key in ("rationale_vs_gold", "labeler_on_report_vs_gold", "constant_normal_vs_gold"):
        r = result[key]
        print(f"{key:<34}{r['consistent_with_gold']:>16.3f}{str(r['interval95']):>18}{r['precision']:>7.3f}"
              f"{r['recall']:>7.3f}{r['f1']:>7.3f}")
    print(f"rationales consistent with the labeler's reading of their report: {summary['consistent_fraction']:.1%}")
    from kdistill.io import write_json

    out = Path(args.out)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
