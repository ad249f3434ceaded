"""Shared by the explain tests: a stand-in model of known output that records what it was given,
and a tiny real checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdistill.labels import FINDING_INDEX, NUM_FINDINGS
from kdistill.scoring import decide


class KnownModel:
    """``predict`` returns the probabilities, texts and maps it was built with; ``seen`` keeps
    the images it received, ``budgets`` the token budgets it was asked for."""

    image_size = (32, 32)

    def __init__(self, probs=None, reports=None, rationales=None, maps=None, thresholds=None):
        self.probs, self.reports, self.rationales, self.maps = probs, reports, rationales, maps
        self.thresholds = np.full(NUM_FINDINGS, 0.5) if thresholds is None else np.asarray(thresholds, float)
        self.seen, self.budgets = [], []

    def predict(self, images, max_new_tokens=64, **_):
        images = np.asarray(images)
        self.seen.append(images.copy())
        self.budgets.append(max_new_tokens)
        b, h, w = images.shape
        probs = np.full((b, NUM_FINDINGS), 0.1) if self.probs is None else np.asarray(self.probs, float)[:b]
        if self.maps is None:
            maps = np.ones((b, NUM_FINDINGS, h, w), np.float32)
            maps[:, FINDING_INDEX["Cardiomegaly"], h // 4:h // 2, w // 4:w // 2] = 5.0
        else:
            maps = np.asarray(self.maps, np.float32)[:b]
        return {"probs": probs, "decisions": decide(probs, self.thresholds),
                "reports": list(self.reports or ["Cardiomegaly. <b>bold</b>"] * b)[:b],
                "rationales": list(self.rationales or ["The heart is enlarged."] * b)[:b], "maps": maps}


def probs_with(**named) -> np.ndarray:
    """One study's 14 probabilities: 0.1 except the findings named (spaces as underscores)."""
    p = np.full(NUM_FINDINGS, 0.1)
    for name, value in named.items():
        p[FINDING_INDEX[name.replace("_", " ")]] = value
    return p


def gradient_images(n: int, size: int = 32, dtype=np.uint8) -> np.ndarray:
    """n distinct images: a diagonal ramp 0..255 with a bright square at a per-image place."""
    ramp = np.add.outer(np.arange(size), np.arange(size)) * (255 / (2 * size - 2))
    out = np.repeat(ramp[None], n, axis=0)
    for i in range(n):
        out[i, 2 + i:8 + i, 4:10] = 250
    return np.rint(out).astype(dtype)


def tiny_checkpoint(folder: Path, size: int = 32) -> Path:
    """An untrained student checkpoint (config, weights, tokenizer, thresholds) built in seconds."""
    import torch

    import student
    from kdistill import config as cfglib
    from kdistill.scoring import save_thresholds
    from student import checkpoint as ckpt
    from student.synthetic import TINY_MODEL, make_prepared, make_tokenizer

    torch.manual_seed(0)
    prep = make_prepared(8, 4, size=size)
    tok = make_tokenizer(prep)
    model = student.create_student(cfglib.from_dict(student.StudentConfig, {**TINY_MODEL, "teacher_embed_dim": 16}),
                                   tok)
    ckpt.save_weights(model.cfg, model.state_dict(), folder)
    ckpt.save_tokenizer(tok, folder)
    save_thresholds(folder, np.full(NUM_FINDINGS, 0.5), chosen_on="validate", policy="prevalence", n_studies=4)
    return folder
