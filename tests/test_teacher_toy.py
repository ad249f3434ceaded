"""A toy teacher corpus, toy studies and a keyword stub labeler for the teacher tests.

Imported by the other tests/test_teacher_*.py files (and by the subprocess scripts they start)
so the toy world is written once. The tests at the bottom pin the toy itself down.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

from kdistill.data.study import Study
from kdistill.labels import FINDING_INDEX, FINDINGS

# finding -> (sign sentence template, keyword the stub labeler reads)
TOY_FINDINGS = {
    "Pleural Effusion": ("Blunting of the {lat} costophrenic angle with a meniscus indicates a {sev} {lat} pleural effusion.", "effusion"),
    "Cardiomegaly": ("The cardiac silhouette is wider than half the thorax, which indicates cardiomegaly.", "cardiomegaly"),
    "Pneumothorax": ("A thin pleural line with no lung markings beyond it indicates a {sev} {lat} pneumothorax.", "pneumothorax"),
    "Edema": ("Perihilar haziness with septal lines indicates pulmonary edema.", "edema"),
}
NORMAL_RATIONALE = "Clear lungs, a normal cardiac silhouette and sharp angles: no acute cardiopulmonary process."
TEXTBOOK = [
    "Fluid in the pleural space collects at the lung base and blunts the costophrenic angle.",
    "The cardiothoracic ratio compares the width of the heart with the width of the thorax.",
    "Air in the pleural space separates the visceral pleura from the chest wall.",
    "Fluid in the interstitium thickens the septa and blurs the hilar vessels.",
]
LATS = ("left", "right")
SEVS = ("small", "moderate", "large")


def _finding_sets(rng: random.Random):
    names = list(TOY_FINDINGS)
    k = rng.choice([0, 1, 1, 2])
    return sorted(rng.sample(names, k), key=FINDING_INDEX.get)


def _rationale(findings, attrs) -> str:
    if not findings:
        return NORMAL_RATIONALE
    parts = []
    for name in findings:
        a = attrs.get(name, {})
        parts.append(TOY_FINDINGS[name][0].format(lat=a.get("laterality", "left"), sev=a.get("severity", "small")))
    return " ".join(parts)


def toy_docs(n_rationale: int = 120, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = [{"kind": "textbook", "text": t, "findings": [], "attributes": {}} for t in TEXTBOOK]
    for _ in range(n_rationale):
        findings = _finding_sets(rng)
        attrs = {f: {"laterality": rng.choice(LATS), "severity": rng.choice(SEVS)} for f in findings}
        docs.append({"kind": "rationale", "text": _rationale(findings, attrs), "findings": findings, "attributes": attrs})
    return docs


def write_toy_corpus(path: Path, n_rationale: int = 120, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in toy_docs(n_rationale, seed)))
    return path


def toy_studies(n: int = 12, seed: int = 1, split: str = "train") -> list[Study]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        findings = _finding_sets(rng)
        labels = [math.nan] * len(FINDINGS)
        sentences = []
        for name in findings:
            labels[FINDING_INDEX[name]] = 1.0
            sentences.append(f"There is a {rng.choice(SEVS)} {rng.choice(LATS)} {TOY_FINDINGS[name][1]}.")
        if not findings:
            labels[FINDING_INDEX["No Finding"]] = 1.0
            sentences.append("The lungs are clear.")
        out.append(Study(study_id=str(50000000 + i), subject_id=str(10000000 + i), split=split,
                         image_paths=[], view="PA", findings=" ".join(sentences),
                         impression="See findings.", labels=labels))
    return out


def stub_label_reports(texts) -> np.ndarray:
    """Keyword labeler for tests whose subject is not the labeler: 1 where a toy keyword occurs."""
    out = np.full((len(texts), len(FINDINGS)), np.nan, dtype=np.float32)
    for i, text in enumerate(texts):
        low = text.lower()
        for name, (_, key) in TOY_FINDINGS.items():
            if key in low:
                out[i, FINDING_INDEX[name]] = 1.0
    return out


def test_toy_corpus_has_both_kinds_and_normal_docs(tmp_path):
    from teacher.corpus import read_corpus

    docs = read_corpus(write_toy_corpus(tmp_path / "corpus.jsonl", 40))
    kinds = {d["kind"] for d in docs}
    assert kinds == {"textbook", "rationale"}
    assert any(d["kind"] == "rationale" and d["findings"] == [] for d in docs)


def test_stub_labeler_reads_keywords():
    y = stub_label_reports(["small left pleural effusion", "nothing"])
    assert y[0, FINDING_INDEX["Pleural Effusion"]] == 1.0
    assert np.isnan(y[1]).all()
