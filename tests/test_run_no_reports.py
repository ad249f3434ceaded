"""A dataset without reports goes through ``kdistill run``: a CheXpert-layout tree (CSV index with
the dataset-prefixed ``Path`` column, images under ROOT/train, ROOT/valid, ...) runs data,
prepare, student (finding heads only), eval and explain; the text stages are skipped by name."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml

from kdistill.labels import FINDINGS
from student.synthetic import TINY_MODEL, make_images, make_labels

CHEXPERT_FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                     "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                     "Pleural Other", "Fracture", "Support Devices")


def _chexpert_tree(root: Path) -> Path:
    """CheXpert-v1.0-small-like tree: train.csv / valid.csv / test.csv, one frontal image per study,
    images whose pixels carry their labels (student.synthetic), paths with the dataset prefix."""
    from PIL import Image

    root = root / "CheXpert-v1.0-small"
    for k, (split, csv_name, n) in enumerate((("train", "train.csv", 48), ("valid", "valid.csv", 16),
                                              ("test", "test.csv", 16))):
        labels = make_labels(n, seed=k)
        images = make_images(labels, 32, seed=k)
        rows = []
        for i in range(n):
            rel = f"CheXpert-v1.0-small/{split}/patient{k}{i:04d}/study1/view1_frontal.jpg"
            path = root.joinpath(*Path(rel).parts[1:])
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(images[i], dtype=np.uint8)).save(path, quality=95)
            values = {f: ("" if np.isnan(labels[i][FINDINGS.index(f)]) else f"{labels[i][FINDINGS.index(f)]:.1f}")
                      for f in CHEXPERT_FINDINGS}
            rows.append({"Path": rel, "Sex": "Female", "Age": "60", "Frontal/Lateral": "Frontal", "AP/PA": "PA",
                         **values})
        with (root / csv_name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


def test_a_chexpert_layout_tree_runs_end_to_end(tmp_path):
    from kdistill import pipeline

    root = _chexpert_tree(tmp_path / "data")
    config = {
        "name": "chexpert_tiny", "seed": 0,
        "data": {"source": "chexpert", "root": str(root)},
        "prepare": {"size": 32, "workers": 1},
        "student": {"model": TINY_MODEL, "batch_size": 8, "max_steps": 6, "eval_every": 3, "save_every": 0,
                    "warmup_steps": 1, "cpu": True, "num_threads": 1, "log_every": 3},
        "eval": {"n_bootstrap": 10, "noise_sigmas": [0.05]},
        "explain": {"max_studies": 4},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    assert pipeline.main([str(path), "--out", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = summary["stages"]
    for name in ("teacher_pretrain", "teacher_train", "teacher_generate"):
        assert stages[name] == pipeline.NO_TEXT
    for name in ("data", "prepare", "student", "eval", "explain"):
        assert stages[name] == "done", (name, stages[name])
    meta = json.loads((run_dir / "prepared" / "meta.json").read_text())
    assert meta["counts"]["train"] == 48 and meta["counts"]["test"] == 16
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/auc_micro_14"] <= 1.0
    assert "test/skipped/report_metrics" in metrics  # no report to score, said by name
    checkpoint = json.loads((run_dir / "student" / "config.json").read_text())
    assert checkpoint["vocab_size"] is None  # a student of finding heads only
    assert (run_dir / "explain" / "index.html").is_file()

