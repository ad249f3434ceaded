"""Label reports with a CheXbert checkpoint the user supplies (it is not redistributable).

The model is that of stanfordmlgroup/CheXbert ``src/models/bert_labeler.py``: a BERT encoder,
the [CLS] hidden state, 13 linear heads of 4 classes (blank, positive, negative, uncertain)
for the conditions in CheXbert's order, and a 14th head of 2 classes (blank, positive) for
No Finding.  The published ``chexbert.pth`` is ``{"model_state_dict": ...}`` saved from an
``nn.DataParallel`` wrapper, so keys read ``module.bert.embeddings...``,
``module.linear_heads.0.weight``.  Nothing is downloaded: the BERT geometry comes from a
``BertConfig`` (bert-base-uncased by default) and the tokenizer from a local directory.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from kdistill.errors import DataError
from kdistill.labels import FINDING_INDEX, NUM_FINDINGS

# CheXbert's head order (src/constants.py CONDITIONS); differs from kdistill.labels.FINDINGS.
CHEXBERT_CONDITIONS = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
# Class index -> label (CheXbert CLASS_MAPPING: 0 blank, 1 positive, 2 negative, 3 uncertain).
CLASS_TO_LABEL = (math.nan, 1.0, 0.0, -1.0)
MAX_TOKENS = 512
# Buffers older transformers versions saved in the state dict and newer ones do not keep.
_STALE_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


class CheXbertModel(nn.Module):
    """Same module names as CheXbert's ``bert_labeler`` so its state dict loads as is."""

    def __init__(self, config):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config)
        self.dropout = nn.Dropout(0.1)  # kept for the layout; inactive in eval mode
        hidden = config.hidden_size
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(13)] + [nn.Linear(hidden, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.bert(input_ids, attention_mask=attention_mask)[0][:, 0, :]
        cls = self.dropout(cls)
        return [head(cls) for head in self.linear_heads]


def _bert_config(bert_config: Any):
    from transformers import BertConfig

    if bert_config is None:
        return BertConfig()  # bert-base-uncased geometry: 12 layers, hidden 768, vocab 30522
    if isinstance(bert_config, BertConfig):
        return bert_config
    if isinstance(bert_config, Mapping):
        return BertConfig(**bert_config)
    if isinstance(bert_config, (str, Path)):
        path = Path(bert_config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise DataError(path, "BERT config not found")
        return BertConfig.from_json_file(str(path))
    raise TypeError(f"bert_config must be None, a BertConfig, a dict or a path, got {type(bert_config).__name__}")


def _load_tokenizer(path: Path):
    """A local BERT tokenizer: a saved transformers tokenizer, or a bare WordPiece vocab.txt."""
    from transformers import AutoTokenizer, BertTokenizerFast

    if not path.is_dir():
        raise DataError(path, "tokenizer directory not found (a local bert-base-uncased tokenizer is needed)")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        if (path / "vocab.txt").is_file():  # the bare vocabulary that BERT releases ship
            return BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
        raise DataError(path, f"cannot load a tokenizer from it: {err}") from None


def load_state_dict(checkpoint: str | Path, model: nn.Module) -> None:
    """Read a CheXbert checkpoint safely (weights_only) and load it into ``model``; any
    missing, unexpected or mis-shaped key is a DataError naming the file."""
    path = Path(checkpoint)
    if not path.is_file():
        raise DataError(path, "CheXbert checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors come in many types
        raise DataError(path, f"cannot read as a torch checkpoint (weights only): {err}") from None
    if isinstance(blob, Mapping) and "model_state_dict" in blob:
        blob = blob["model_state_dict"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise DataError(path, "expected {'model_state_dict': {name: tensor}} as CheXbert saves it")
    state = OrderedDict()
    for key, value in blob.items():
        key = key[len("module."):] if key.startswith("module.") else key
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        state[key] = value
    expected = model.state_dict()
    for key in _STALE_BUFFERS:
        if key in state and key not in expected:
            del state[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DataError(
            path,
            "does not match the CheXbert layout (bert.* + linear_heads.0-13.*): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}",
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise DataError(path, f"tensor shapes do not match the BERT config (key, file, model): {wrong[:3]}")
    model.load_state_dict(state, strict=True)


def clean_report(text: str) -> str:
    """CheXbert's preprocessing: one line, single spaces, no space before . or ,"""
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    text = re.sub(r"\s+", " ", text.strip().replace("\n", " "))
    return re.sub(r"\s+(?=[.,])", "", text)


class CheXbertLabeler:
    """``CheXbertLabeler(checkpoint, tokenizer_dir).label_reports(texts) -> (n, 14)``."""

    def __init__(
        self,
        checkpoint: str | Path,
        tokenizer_dir: str | Path,
        bert_config: Any = None,
        device: str = "cpu",
        batch_size: int = 16,
    ):
        self.tokenizer = _load_tokenizer(Path(tokenizer_dir))
        self.config = _bert_config(bert_config)
        self.model = CheXbertModel(self.config)
        load_state_dict(checkpoint, self.model)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size

    def _encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        pieces = tok.tokenize(clean_report(text))
        if not pieces:
            return [tok.cls_token_id, tok.sep_token_id]
        ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(pieces), tok.sep_token_id]
        if len(ids) > MAX_TOKENS:  # CheXbert keeps the first 511 tokens and a closing [SEP]
            ids = ids[: MAX_TOKENS - 1] + [tok.sep_token_id]
        return ids

    @torch.no_grad()
    def label_reports(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), NUM_FINDINGS), np.nan, dtype=np.float32)
        columns = [FINDING_INDEX[name] for name in CHEXBERT_CONDITIONS]
        pad = self.tokenizer.pad_token_id or 0
        for lo in range(0, len(texts), self.batch_size):
            encoded = [self._encode(t) for t in texts[lo: lo + self.batch_size]]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for row, e in enumerate(encoded):
                ids[row, : len(e)] = torch.tensor(e)
                mask[row, : len(e)] = 1
            logits = self.model(ids.to(self.device), mask.to(self.device))
            for head, column in enumerate(columns):
                classes = logits[head].argmax(dim=1).cpu().numpy()
                out[lo: lo + len(encoded), column] = [CLASS_TO_LABEL[c] for c in classes]
        return out

    def label_report(self, text: str) -> np.ndarray:
        return self.label_reports([text])[0]
