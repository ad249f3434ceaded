"""Shared by the saliency tests: the synthetic prepared cache (student.synthetic) with expert
regions where its images have their findings (each positive finding is a bright square in a
finding-specific cell of a 4x4 grid), and a tiny student trained on it for a few steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdistill.labels import NUM_FINDINGS

CELLS = 4


def cell_bits(labels: np.ndarray, size: int) -> np.ndarray:
    """roi_bits (n, S, S) uint16: bit j set on finding j's cell where it is labelled 1 (as make_images draws)."""
    step = size // CELLS
    bits = np.zeros((len(labels), size, size), dtype=np.uint16)
    for i, row in enumerate(labels):
        for j in range(NUM_FINDINGS):
            if row[j] == 1:
                r, c = divmod(j, CELLS)
                bits[i, r * step:(r + 1) * step, c * step:(c + 1) * step] |= np.uint16(1 << j)
    return bits


def with_regions(prepared, size: int):
    """``prepared`` (a DatasetDict of make_prepared) with a roi_bits column in every split."""
    import datasets

    out = {}
    for name, split in prepared.items():
        labels = np.asarray(split["labels"], dtype=np.float32)
        features = split.features.copy()
        features["roi_bits"] = datasets.Array2D((size, size), "uint16")
        out[name] = datasets.Dataset.from_dict({**split.to_dict(), "roi_bits": list(cell_bits(labels, size))},
                                               features=features)
    return datasets.DatasetDict(out)


def trained_checkpoint(folder: Path, size: int = 32, steps: int = 30, n_train: int = 48, n_val: int = 16):
    """(checkpoint folder, prepared cache folder with regions) of a tiny student trained ``steps`` steps."""
    import torch

    from kdistill import config as cfglib
    from student.synthetic import TINY_MODEL, make_prepared, make_rationales, make_tokenizer
    from student.train import StudentTrainConfig, train

    torch.set_num_threads(1)
    prep = make_prepared(n_train, n_val, size=size)
    tok = make_tokenizer(prep)
    cfg = cfglib.from_dict(StudentTrainConfig, {
        "model": TINY_MODEL, "batch_size": 16, "max_steps": steps, "eval_every": steps, "save_every": 0,
        "warmup_steps": 2, "log_every": steps, "lr": 3e-3, "cpu": True, "num_threads": 1})
    ckpt = folder / "student"
    train(cfg, ckpt, prep, tok, make_rationales(prep))
    prepared = folder / "prepared"
    with_regions(prep, size).save_to_disk(str(prepared))
    return ckpt, prepared
