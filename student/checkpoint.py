"""The student checkpoint folder: config.json, model.safetensors, tokenizer files, thresholds.json,
metrics.json. ``load(path)`` rebuilds the model in one call."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill import config as cfglib
from kdistill.errors import DataError
from kdistill.labels import FINDINGS, NUM_FINDINGS
from student.config import StudentConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
THRESHOLDS = "thresholds.json"
METRICS = "metrics.json"


def save_weights(cfg: StudentConfig, state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """model.safetensors + config.json, each written through a temp file and os.replace."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{WEIGHTS}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, out_dir / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    cfglib.save_json(cfg, out_dir / CONFIG)


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    tokenizer.save_pretrained(str(out_dir))


def save_thresholds(thresholds: np.ndarray, out_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
    data = {"findings": list(FINDINGS), "thresholds": [float(t) for t in thresholds], **(extra or {})}
    cfglib.write_text_atomic(Path(out_dir) / THRESHOLDS, json.dumps(data, indent=2) + "\n")


def f1_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per finding, the threshold maximising F1 on (probs, targets) where mask is 1.

    A finding with no positive (or no labelled entry) keeps 0.5. Returns (thresholds, best F1s).
    """
    from sklearn.metrics import precision_recall_curve

    th = np.full(NUM_FINDINGS, 0.5, dtype=np.float32)
    f1s = np.full(NUM_FINDINGS, np.nan, dtype=np.float32)
    for c in range(probs.shape[1]):
        keep = mask[:, c] > 0
        y, p = targets[keep, c], probs[keep, c]
        if y.size == 0 or y.sum() == 0:
            continue
        prec, rec, cut = precision_recall_curve(y, p)
        f1 = 2 * prec[:-1] * rec[:-1] / np.clip(prec[:-1] + rec[:-1], 1e-12, None)
        best = int(np.argmax(f1))
        th[c], f1s[c] = cut[best], f1[best]
    return th, f1s


def load(path: str | Path, device: str | torch.device = "cpu"):
    """A trained student from its checkpoint folder, in eval mode, thresholds set."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from student.model import create_student

    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise DataError(path / name, "missing: not a student checkpoint folder (run `kdistill student train`)")
    try:
        raw = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise DataError(path / CONFIG, f"not valid JSON: {err}") from None
    cfg = cfglib.from_dict(StudentConfig, raw, source=str(path / CONFIG))
    # The weights come from the checkpoint: never fetch the tower's pretrained ones again.
    cfg.vision_pretrained = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot load the tokenizer files: {err}") from None
    model = create_student(cfg, tokenizer)
    state = load_file(str(path / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(path / WEIGHTS, f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if (path / THRESHOLDS).is_file():
        th = json.loads((path / THRESHOLDS).read_text())["thresholds"]
        if len(th) != NUM_FINDINGS:
            raise DataError(path / THRESHOLDS, f"expected {NUM_FINDINGS} thresholds, got {len(th)}")
        model.thresholds.copy_(torch.tensor(th))
    return model.to(device).eval()
