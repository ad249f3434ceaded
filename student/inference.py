"""``model.predict(images)``: probabilities, decisions, reports, rationales and finding maps."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdistill.data.images import from_pil, read_image

from kdistill.scoring import decide
from student.data import to_float_images


def _as_list(images) -> list:
    """(B, H, W), (B, 1, H, W) array/tensor, one image, or a sequence of images -> list of images.

    An image is an (H, W) array or tensor (uint8 0-255 or float 0-1), a PIL image, or a file path
    (JPEG, PNG 8/16-bit, DICOM; read by ``kdistill.data.images.read_image``, which names a file it
    cannot decode)."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 2:
            return [images]
        if images.ndim == 4:
            if images.shape[1] != 1:
                raise ValueError(f"expected grayscale images (B, 1, H, W), got shape {tuple(images.shape)}")
            images = images[:, 0]
        if images.ndim != 3:
            raise ValueError(f"expected images (B, H, W) or (B, 1, H, W), got shape {tuple(images.shape)}")
        return [images[i] for i in range(images.shape[0])]
    return [_as_array(item) for item in images]


def _as_array(item):
    if isinstance(item, (str, Path)):
        return read_image(item)
    if isinstance(item, Image.Image):
        return from_pil(item)
    return item


def predict(model, images, batch_size: int = 32, max_new_tokens: int | None = 64, texts: bool = True,
            rationales: bool = True) -> dict[str, Any]:
    """Run the student on images (arrays uint8 0-255 or float 0-1, PIL images, or file paths: see
    ``_as_list``), in batches, on the model's device.

    Texts are greedy and stop at the tokenizer's end-of-text token; ``max_new_tokens`` caps each
    text (None: as long as the checkpoint's ``max_text_len`` allows, the most it was trained to
    write). A text that reached the cap may end mid-sentence: ``student.explain.texts`` finds and
    trims those.

    Returns "probs" (B, 14) float32, "decisions" (B, 14) bool (thresholds.json, with "No Finding"
    consistent with the other findings: ``kdistill.scoring.decide``), "reports" and
    "rationales" (lists of str; empty when ``texts`` is False; "rationales" also when ``rationales``
    is False, for callers that score reports only) and "maps" (B, 14, H, W): the finding
    attention maps upsampled to the input size (of the first image when sizes differ).
    """
    items: Sequence = _as_list(images)
    if max_new_tokens is None:
        max_new_tokens = int(model.cfg.max_text_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, maps, reports, rationale_texts = [], [], [], []
    out_size = tuple(items[0].shape[-2:]) if len(items) else (0, 0)
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            x, _ = to_float_images(chunk, model.image_size)
            x = x.to(device)
            tokens = model.encode_image(x)
            logits, m, _ = model.classify(tokens)
            probs.append(torch.sigmoid(logits.float()).cpu())
            maps.append(F.interpolate(m.float(), size=out_size, mode="bilinear", align_corners=False).cpu())
            if texts and model.has_text:
                rep, rat = model.generate_texts(tokens, max_new_tokens, rationales=rationales)
                reports += rep
                rationale_texts += rat
    model.train(was_training)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 14), np.float32)
    return {
        "probs": p,
        "decisions": decide(p, model.thresholds.cpu().numpy()),
        "reports": reports,
        "rationales": rationale_texts,
        "maps": torch.cat(maps).numpy() if maps else np.zeros((0, 14, 0, 0), np.float32),
    }
