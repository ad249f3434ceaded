"""Tiny in-memory stand-ins for the prepared cache, the rationale cache and the teacher tokenizer.

Used by the student's tests and benchmarks so they run without the other stages: a byte-level
BPE trained on the synthetic texts, a DatasetDict with the prepared cache's columns, and a
rationale Dataset with the teacher cache's columns.
"""
from __future__ import annotations

import numpy as np

from kdistill.labels import FINDINGS, NUM_FINDINGS

_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def _report(labels: np.ndarray) -> tuple[str, str]:
    pos = [FINDINGS[i] for i in range(NUM_FINDINGS) if labels[i] == 1 and FINDINGS[i] != "No Finding"]
    unc = [FINDINGS[i] for i in range(NUM_FINDINGS) if labels[i] == -1]
    findings = " ".join([f"There is {f.lower()}." for f in pos] + [f"Possible {f.lower()}." for f in unc])
    impression = ", ".join(pos) if pos else "No acute cardiopulmonary process."
    return findings or "The lungs are clear.", impression


def _rationale(labels: np.ndarray) -> str:
    pos = [FINDINGS[i].lower() for i in range(NUM_FINDINGS) if labels[i] == 1]
    if not pos:
        return "Clear lungs and a normal heart size explain a normal study."
    return " ".join(f"Increased density explains {p}." for p in pos)


def make_labels(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.25, 0.3, 0.1, 0.35], size=(n, NUM_FINDINGS)).astype(np.float32)
    return labels


def make_images(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Noise plus one bright square per positive finding at a finding-specific place."""
    rng = np.random.default_rng(seed + 1)
    n = labels.shape[0]
    imgs = rng.normal(60, 10, size=(n, size, size))
    cells = 4
    step = size // cells
    for i in range(n):
        for f in range(NUM_FINDINGS):
            if labels[i, f] == 1:
                r, c = divmod(f, cells)
                imgs[i, r * step:(r + 1) * step, c * step:(c + 1) * step] += 120
    return np.clip(imgs, 0, 255).astype(np.uint8)


def make_rois(labels: np.ndarray, size: int) -> np.ndarray:
    """The prepared cache's ``roi_bits`` (n, size, size) uint16 for ``make_images``: bit f set on
    finding f's square wherever f is labelled positive (its true region)."""
    n = labels.shape[0]
    bits = np.zeros((n, size, size), dtype=np.uint16)
    step = size // 4
    for i in range(n):
        for f in range(NUM_FINDINGS):
            if labels[i, f] == 1:
                r, c = divmod(f, 4)
                bits[i, r * step:(r + 1) * step, c * step:(c + 1) * step] |= np.uint16(1 << f)
    return bits


def make_prepared(n_train: int = 32, n_val: int = 16, size: int = 32, seed: int = 0, rois: bool = False):
    """A datasets.DatasetDict with the prepared cache's columns (train, validate, test); with
    ``rois`` also ``roi_bits``, the true region of every positive finding (``make_rois``)."""
    import datasets

    out = {}
    for k, (name, n) in enumerate((("train", n_train), ("validate", n_val), ("test", n_val))):
        labels = make_labels(n, seed + 10 * k)
        imgs = make_images(labels, size, seed + 10 * k)
        texts = [_report(l) for l in labels]
        columns = {"roi_bits": [b for b in make_rois(labels, size)]} if rois else {}
        out[name] = datasets.Dataset.from_dict({
            **columns,
            "study_id": [str(50000000 + 1000 * k + i) for i in range(n)],
            "subject_id": [str(10000000 + i) for i in range(n)],
            "view": ["PA"] * n,
            "image": [im for im in imgs],
            "labels": [l.tolist() for l in labels],
            "findings": [t[0] for t in texts],
            "impression": [t[1] for t in texts],
        })
    return datasets.DatasetDict(out)


def make_rationales(prepared, dim: int = 16, seed: int = 0, teacher_id: str = "toy-teacher"):
    """A rationale Dataset (teacher cache columns) for every study of ``prepared``."""
    import datasets

    rng = np.random.default_rng(seed + 7)
    basis = rng.normal(size=(NUM_FINDINGS, dim)).astype(np.float32)
    rows = {"study_id": [], "prompt": [], "rationale": [], "teacher_id": [], "gen_config_hash": [],
            "embedding": [], "consistent": []}
    for split in prepared.values():
        for sid, labels in zip(split["study_id"], split["labels"]):
            y = np.nan_to_num(np.asarray(labels, dtype=np.float32)) == 1
            emb = basis[y].sum(0) + 0.1 * rng.normal(size=dim).astype(np.float32)
            rows["study_id"].append(sid)
            rows["prompt"].append("Explain the findings.")
            rows["rationale"].append(_rationale(np.asarray(labels)))
            rows["teacher_id"].append(teacher_id)
            rows["gen_config_hash"].append("0")
            rows["embedding"].append(emb.tolist())
            rows["consistent"].append(True)
    return datasets.Dataset.from_dict(rows)


def add_topk(rationales, tokenizer, k: int = 4, seed: int = 0, top_prob: float = 0.7):
    """``rationales`` with the teacher cache's top-k columns from a stand-in teacher that gives
    each true next token (the rationale's tokens, then eos) ``top_prob`` and the rest of its top k
    to random other tokens."""
    rng = np.random.default_rng(seed + 11)
    vocab = len(tokenizer)
    ids_col, lp_col = [], []
    for text in rationales["rationale"]:
        fed = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        rest = np.full(k - 1, (1 - top_prob) / max(k - 1, 1))
        ids, lps = [], []
        for t in fed:
            others = rng.choice([v for v in range(vocab) if v != t], size=k - 1, replace=False)
            ids.append([t, *others.tolist()])
            lps.append(np.log([top_prob, *rest]).astype(np.float32).tolist())
        ids_col.append(ids)
        lp_col.append(lps)
    return rationales.add_column("topk_ids", ids_col).add_column("topk_logprobs", lp_col)


def make_tokenizer(prepared=None, vocab_size: int = 300):
    """A byte-level BPE trained on the synthetic texts, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    prepared = prepared if prepared is not None else make_prepared()
    texts = []
    for split in prepared.values():
        for f, i, l in zip(split["findings"], split["impression"], split["labels"]):
            texts += [f"FINDINGS: {f}\nIMPRESSION: {i}", _rationale(np.asarray(l))]
    texts += ["<report>", "<rationale>"]
    bpe = Tokenizer(models.BPE(unk_token=_SPECIAL["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **_SPECIAL)


TINY_MODEL = {
    "vision_model": "kdistill-vit-tiny",
    "vision_overrides": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
    "decoder_width": 32, "decoder_heads": 2, "text_layers": 1, "multimodal_layers": 1,
    "max_text_len": 48, "head_width": 32, "head_heads": 2, "head_layers": 1,
}
