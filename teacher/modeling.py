"""Models and tokenizers of the teacher: building the small default LM from a JSON config,
loading any causal LM by local path or hub id, LoRA targets per family, adapter identity.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from kdistill.errors import DataError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# LoRA target modules per model family (config.model_type). Everything linear in the blocks:
# on the phantom, attention-only LoRA named the right findings in 30% of rationales, all
# linear layers in ~94%. Unknown families fall back to every nn.Linear except the LM head.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def is_local(model_id: str | Path) -> bool:
    text = str(model_id)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") > 1


def check_model_path(model_id: str | Path) -> None:
    """A local path that does not exist is bad input, not a hub id to look up."""
    if is_local(model_id) and not Path(str(model_id)).expanduser().exists():
        raise DataError(model_id, "base model path does not exist")
    if is_local(model_id) and not (Path(str(model_id)).expanduser() / "config.json").is_file():
        raise DataError(model_id, "not a transformers model folder (no config.json)")


# How a user allows a model folder's own Python code for one run (every stage config has the key).
REMOTE_CODE_FLAG = "trust_remote_code=true"
_CODE_FILES = ("config.json", "tokenizer_config.json", "adapter_config.json")


def remote_code_request(folder: str | Path) -> str | None:
    """Why loading the local model folder ``folder`` would run Python code it ships (an
    ``auto_map`` in its config files), or None."""
    folder = Path(str(folder)).expanduser()
    for name in _CODE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            modules = sorted({str(v).split(".")[0] for v in _flatten(data["auto_map"])})
            return f"{name} has an auto_map naming its own Python code ({', '.join(m + '.py' for m in modules)})"
    return None


def _flatten(value) -> list:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [] if value is None else [value]


def check_remote_code(model_id: str | Path, trust_remote_code: bool, reason: str | None = None) -> None:
    """Refuse a local folder that asks to run its own code unless the user allowed it for this
    run (``trust_remote_code: true`` in the stage config or the override on the command line).
    Hub ids are left to transformers, which refuses remote code unless the flag is passed."""
    if trust_remote_code or not is_local(model_id):
        return
    reason = reason or remote_code_request(model_id)
    if reason:
        raise DataError(model_id, f"{reason}: loading it would run that code. It is not run unless you allow it "
                                  f"for this run: pass {REMOTE_CODE_FLAG} (the stage config's trust_remote_code, or "
                                  f"the override on the command line) if you trust this folder")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """AutoTokenizer with a pad token (set to EOS, or added, and logged, when missing)."""
    from transformers import AutoTokenizer

    check_remote_code(path, trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot load a tokenizer: {err}") from None
    ensure_pad_token(tok, where=str(path))
    return tok


def ensure_pad_token(tok, where: str = "") -> None:
    if tok.pad_token is not None:
        return
    if tok.eos_token is not None:
        tok.pad_token = tok.eos_token
        log.warning("tokenizer %s has no pad token; using its EOS token %r for padding", where, tok.eos_token)
    else:
        tok.add_special_tokens({"pad_token": "<pad>"})
        log.warning("tokenizer %s has no pad or EOS token; added '<pad>'", where)


def load_causal_lm(model_id: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """Any AutoModelForCausalLM by local path or hub id (hub ids need network; nothing is
    downloaded unless the user names one and is online)."""
    from transformers import AutoModelForCausalLM

    check_model_path(model_id)
    check_remote_code(model_id, trust_remote_code)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(model_id), dtype=_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise DataError(model_id, f"cannot load a causal LM: {err}") from None


def build_llama(config_json: str | Path | dict, vocab_size: int, tok) -> Any:
    """A fresh Llama-architecture LM from a JSON config (ours in teacher/configs/ or the user's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = dict(config_json) if isinstance(config_json, dict) else json.loads(resolve_config(config_json).read_text())
    spec = {k: v for k, v in spec.items() if not k.startswith("_")}  # "_comment" etc.
    spec.update(vocab_size=vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(LlamaConfig(**spec))


def resolve_config(name: str | Path) -> Path:
    """A config name shipped in teacher/configs/ (e.g. ``llama_3m``) or a path to a JSON file."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name}.json"
    if shipped.is_file():
        return shipped
    raise DataError(name, f"model config not found (neither a file nor one of {sorted(p.stem for p in CONFIG_DIR.glob('*.json'))})")


def lora_targets(model) -> list[str] | str:
    family = getattr(model.config, "model_type", "")
    if family in LORA_TARGETS:
        return LORA_TARGETS[family]
    # peft's "all-linear" = every Linear (and Conv1D) layer except the output head.
    log.info("no LoRA target table for model type %r; targeting all linear layers", family)
    return "all-linear"


def adapter_hash(folder: str | Path) -> str:
    """sha256 of the adapter weights file: the teacher's identity in the rationale cache."""
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise DataError(path, "LoRA adapter weights not found (run `kdistill teacher train` first)")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_teacher_json(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "teacher.json"
    if not path.is_file():
        raise DataError(path, "teacher.json not found: not a trained teacher folder (run `kdistill teacher train`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err}") from None


def teacher_base(folder: str | Path, meta: dict[str, Any]) -> str:
    """The base model a teacher folder's adapter sits on: its path relative to the folder when
    that still exists (the run folder may have moved), else the recorded path or hub id."""
    folder = Path(folder)
    if meta.get("base_relative") and (folder / meta["base_relative"]).is_dir():
        return str((folder / meta["base_relative"]).resolve())
    return meta["base"]


def load_teacher(folder: str | Path, device: str | torch.device = "cpu", dtype: str | None = None,
                 trust_remote_code: bool = False):
    """(model with the LoRA merged in, tokenizer, teacher.json) ready for inference.

    Merging (``merge_and_unload``) makes generation run at the base model's speed: no extra
    LoRA matmuls per layer per step. ``trust_remote_code`` is the user's word for this run:
    a teacher trained with remote code (``teacher.json``) or a base or teacher folder whose
    config maps to its own Python files is refused without it, naming the folder and the flag.
    """
    from peft import PeftModel

    folder = Path(folder)
    meta = read_teacher_json(folder)
    base = teacher_base(folder, meta)
    check_model_path(base)
    if meta.get("trust_remote_code"):
        check_remote_code(folder, trust_remote_code, "teacher.json says this teacher was trained with "
                                                      "trust_remote_code (its base runs its own Python code)")
    check_remote_code(folder, trust_remote_code)
    tok = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    model = load_causal_lm(base, dtype=dtype or meta.get("dtype", "float32"), trust_remote_code=trust_remote_code)
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    model.to(device).eval()
    return model, tok, meta


def _dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16, float16 or auto, got {name!r}") from None


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
