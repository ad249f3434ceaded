"""The student checkpoint folder: config.json, model.safetensors, tokenizer files, thresholds.json,
metrics.json. ``load(path)`` rebuilds the model in one call."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from kdistill import config as cfglib
from kdistill.errors import DataError
from kdistill.io import atomic_path, write_text_atomic
from kdistill.scoring import THRESHOLDS_FILE, read_thresholds, save_thresholds, thresholds_info
from student.card import CARD
from student.config import StudentConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
THRESHOLDS = THRESHOLDS_FILE
METRICS = "metrics.json"


def save_weights(cfg: StudentConfig, state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """model.safetensors + config.json, each written atomically (kdistill.io)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    cfglib.save_json(cfg, out_dir / CONFIG)


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    tokenizer.save_pretrained(str(out_dir))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors -> tensors; a truncated or corrupt file, or non-finite weights, is a
    ``DataError`` naming it (non-finite weights would give NaN probabilities for every image)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(path, f"truncated or corrupt safetensors file ({err})") from None
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DataError(path, f"non-finite weights (NaN or infinity) in {', '.join(bad[:5])}")
    return state


def _load_tokenizer(path: Path):
    """The folder's tokenizer. AutoTokenizer also reads config.json, finds ``model_type:
    kdistill-student`` (not a transformers model) and warns that the types differ; the tokenizer
    files alone decide the tokenizer, so that one warning is silenced here."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(before)


def load(path: str | Path, device: str | torch.device = "cpu"):
    """A trained student from its checkpoint folder, in eval mode, thresholds set."""
    from student.model import create_student

    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise DataError(path / name, "missing: not a student checkpoint folder (run `kdistill student train`)")
    try:
        raw = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path / CONFIG, f"not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DataError(path / CONFIG, f"expected a JSON object (the student config), got {type(raw).__name__}")
    cfg = cfglib.from_dict(StudentConfig, raw, source=str(path / CONFIG))
    # The weights come from the checkpoint: never fetch the tower's pretrained ones again.
    cfg.vision_pretrained = None
    tokenizer = None
    if cfg.vocab_size is not None:  # a student without text (vocab_size None) ships no tokenizer
        try:
            tokenizer = _load_tokenizer(path)
        except (OSError, ValueError) as err:
            raise DataError(path, f"cannot load the tokenizer files: {err}") from None
    try:
        model = create_student(cfg, tokenizer)
    except (ValueError, AssertionError, RuntimeError, KeyError) as err:
        raise DataError(path / CONFIG, f"does not describe a buildable student: {err}") from None
    state = _read_weights(path / WEIGHTS)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: config.json and model.safetensors are of other models
        sizes = [line.strip() for line in str(err).splitlines() if line.strip().startswith("size mismatch")]
        raise DataError(path / WEIGHTS, f"weights do not fit {CONFIG} (another model's weights or config?): "
                                        f"{'; '.join(sizes[:3]) or err}") from None
    if missing or unexpected:
        raise DataError(path / WEIGHTS, f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    thresholds = read_thresholds(path)
    if thresholds is not None:
        model.thresholds.copy_(torch.as_tensor(thresholds, dtype=model.thresholds.dtype))
    # What save_pretrained carries into a copy: how the thresholds were chosen, and the card.
    info = thresholds_info(path) or {}
    model.thresholds_info = {k: v for k, v in info.items() if k not in ("findings", "thresholds")}
    card = path / CARD
    model.card_text = card.read_text(encoding="utf-8") if card.is_file() else None
    return model.to(device).eval()


def save_pretrained(model, out_dir: str | Path) -> Path:
    """Write ``model`` as a checkpoint folder that ``load`` (and ``StudentModel.from_pretrained``)
    reads back: weights, config.json, the tokenizer, thresholds.json (with how they were chosen,
    when the model was loaded from a folder that said so) and README.md (the loaded folder's card,
    else a short one with the research-use statement)."""
    from student.card import RESEARCH_USE

    out_dir = Path(out_dir)
    save_weights(model.cfg, model.state_dict(), out_dir)
    if model.tokenizer is not None:
        save_tokenizer(model.tokenizer, out_dir)
    info = dict(getattr(model, "thresholds_info", None) or {"policy": "as set on the model"})
    save_thresholds(out_dir, model.thresholds.detach().cpu().numpy(), **info)
    card = getattr(model, "card_text", None) or (
        f"# kdistill student\n\n> {RESEARCH_USE}\n\nA `{model.cfg.vision_model}` student with 14 finding heads"
        f"{' and a report decoder' if model.has_text else ''}; maps on a {model.grid[0]}x{model.grid[1]} grid.\n\n"
        "```python\nfrom student.model import StudentModel\nmodel = StudentModel.from_pretrained(folder)\n```\n")
    write_text_atomic(out_dir / CARD, card)
    return out_dir
