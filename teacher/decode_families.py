"""The decoder-block layouts ``teacher.decode`` runs its own forward pass over.

A family maps a transformers causal LM onto the few operations the decoding loop needs:
token (+ position) embedding, per layer a pre-attention norm, a fused q/k/v projection,
rotary embedding or none, the output projection, a pre-MLP norm and the MLP, then the final
norm and the LM head. The pieces are the model's own modules and parameters (q/k/v and
gate/up concatenated into one matmul each where the model keeps them apart), so the loop
computes what the model computes; :func:`teacher.decode.supports` still checks it on a probe.

* ``llama`` layout (``llama``, ``mistral``, ``qwen2``): RMSNorm, rotary, q/k/v/o and
  gate/up/down projections (biases where the config has them), grouped-query attention, an
  optional sliding window per layer (Mistral: every layer; Qwen2: the layers ``layer_types``
  marks ``sliding_attention``).
* ``gpt2``: LayerNorm, learned absolute positions, fused ``c_attn`` (Conv1D), no rotary.
"""
from __future__ import annotations

from typing import Any

import torch

LLAMA_LAYOUT = ("llama", "mistral", "qwen2")
FAMILIES = LLAMA_LAYOUT + ("gpt2",)


def family_of(model) -> str | None:
    cfg = model.config.get_text_config()
    kind = getattr(cfg, "model_type", None)
    return kind if kind in FAMILIES else None


def _rms(norm, x):
    """The model's RMSNorm as one fused op (same result as the module's float32 formula)."""
    return torch.nn.functional.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


def _cat(tensors) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors])


class Family:
    """Common shape facts; subclasses fill ``layers`` (one dict per block) and the ops."""

    rotary = None

    def __init__(self, model):
        cfg = model.config.get_text_config()
        self.cfg = cfg
        self.head = model.get_output_embeddings()
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.layers: list[dict[str, Any]] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def windows(self) -> list[int | None]:
        """Per layer: the sliding window (keys older than ``window`` positions are not seen) or None."""
        return [None] * len(self.layers)

    def positions_table(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None


class LlamaLayout(Family):
    def __init__(self, model):
        super().__init__(model)
        base = model.base_model
        self.embed_tokens, self.rotary, self.norm = base.embed_tokens, base.rotary_emb, base.norm
        for layer in base.layers[: self.cfg.num_hidden_layers]:
            att, mlp = layer.self_attn, layer.mlp
            qkv = [att.q_proj, att.k_proj, att.v_proj]
            gate_up = [mlp.gate_proj, mlp.up_proj]
            self.layers.append({
                "ln1": layer.input_layernorm, "ln2": layer.post_attention_layernorm,
                "qkv_w": _cat([m.weight for m in qkv]), "qkv_b": _cat([m.bias for m in qkv]),
                "o": att.o_proj, "scaling": float(att.scaling),
                "gu_w": _cat([m.weight for m in gate_up]), "gu_b": _cat([m.bias for m in gate_up]),
                "down": mlp.down_proj, "act": mlp.act_fn,
            })

    def windows(self) -> list[int | None]:
        window = getattr(self.cfg, "sliding_window", None)
        if not window:
            return [None] * len(self.layers)
        types = getattr(self.cfg, "layer_types", None)
        if types is None:  # Mistral: every layer
            return [int(window)] * len(self.layers)
        return [int(window) if t == "sliding_attention" else None for t in types[: len(self.layers)]]

    def positions_table(self, n: int, device):
        """cos/sin of every position up to ``n`` from the model's rotary module, computed once
        (elementwise in the position, so a row of the table equals the value for one position)."""
        probe = torch.zeros(1, dtype=self.dtype, device=device)
        cos, sin = self.rotary(probe, torch.arange(n, device=device)[None])
        return cos[0], sin[0]

    def embed(self, ids, positions):
        return self.embed_tokens(ids)

    def norm1(self, layer, x):
        return _rms(layer["ln1"], x)

    def norm2(self, layer, x):
        return _rms(layer["ln2"], x)

    def final(self, x):
        return self.norm(x)

    def qkv(self, layer, h):
        return torch.nn.functional.linear(h, layer["qkv_w"], layer["qkv_b"])

    def out(self, layer, att):
        return layer["o"](att)

    def mlp(self, layer, h):
        gate, up = torch.nn.functional.linear(h, layer["gu_w"], layer["gu_b"]).chunk(2, dim=-1)
        return layer["down"](layer["act"](gate) * up)


class GPT2Layout(Family):
    def __init__(self, model):
        super().__init__(model)
        base = model.base_model
        self.wte, self.wpe, self.norm = base.wte, base.wpe, base.ln_f
        for layer in base.h[: self.cfg.num_hidden_layers]:
            att = layer.attn
            if getattr(layer, "crossattention", None) is not None:
                raise ValueError("GPT-2 blocks with cross-attention are not decoded here")
            self.layers.append({"ln1": layer.ln_1, "ln2": layer.ln_2, "c_attn": att.c_attn, "o": att.c_proj,
                                "scaling": float(att.scaling), "mlp": layer.mlp})

    def embed(self, ids, positions):
        return self.wte(ids) + self.wpe(positions)

    def norm1(self, layer, x):
        return layer["ln1"](x)

    def norm2(self, layer, x):
        return layer["ln2"](x)

    def final(self, x):
        return self.norm(x)

    def qkv(self, layer, h):
        return layer["c_attn"](h)

    def out(self, layer, att):
        return layer["o"](att)

    def mlp(self, layer, h):
        return layer["mlp"](h)


def structure_ok(model) -> bool:
    """The attributes a family's layout reads are all there (no q/k norms, no cross-attention)."""
    family = family_of(model)
    if family is None or model.get_output_embeddings() is None:
        return False
    base = model.base_model
    if family == "gpt2":
        return all(hasattr(base, n) for n in ("wte", "wpe", "ln_f", "h")) and all(
            hasattr(b, "attn") and hasattr(b.attn, "c_attn") and hasattr(b, "mlp") for b in base.h)
    need = ("embed_tokens", "rotary_emb", "norm", "layers")
    return all(hasattr(base, n) for n in need) and all(
        hasattr(layer, "self_attn") and hasattr(layer.self_attn, "q_proj") and hasattr(layer, "mlp")
        and hasattr(layer.mlp, "gate_proj") and not hasattr(layer.self_attn, "q_norm")
        for layer in base.layers)


def layout(model) -> Family:
    return GPT2Layout(model) if family_of(model) == "gpt2" else LlamaLayout(model)
