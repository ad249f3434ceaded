"""The student network: open_clip vision tower, finding query decoder, CoCa-style report decoder.

``create_student(cfg, tokenizer)`` is the one factory. The model takes float images in [0, 1],
shape (B, 1, H, W), at ``image_size``; ``predict`` (student.inference) accepts anything looser.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.labels import NUM_FINDINGS
from student.config import StudentConfig
from student.text import TokenSpec

CONFIG_DIR = Path(__file__).with_name("configs")


# ----------------------------------------------------------------------------- vision tower

@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


def _open_clip_config(name: str) -> tuple[str, dict[str, Any]]:
    """Resolve a config name or JSON path to (registered name, model config dict)."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        open_clip.add_model_config(path)
        name = path.stem
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(
            f"unknown open_clip model config {name!r}: not built in, not in {CONFIG_DIR}, not a JSON file"
        )
    return name, deepcopy(cfg)


def build_vision_tower(cfg: StudentConfig) -> nn.Module:
    """Only the vision tower of an open_clip model, optionally with pretrained weights.

    The text tower open_clip builds alongside is dropped; with no pretrained weights it is
    replaced by a tiny one so a large config costs nothing for it. Text-tower "pretrained" flags
    are off, so nothing is fetched unless ``vision_pretrained`` names an open_clip tag.
    """
    import open_clip

    name, model_cfg = _open_clip_config(cfg.vision_model)
    if "timm_model_name" in model_cfg["vision_cfg"]:
        raise ValueError(f"{name}: timm vision towers are not supported by the student (open_clip ViT configs only)")
    vision_cfg = {**model_cfg["vision_cfg"], **cfg.vision_overrides}
    kwargs: dict[str, Any] = {"vision_cfg": vision_cfg}
    if not cfg.vision_pretrained:
        kwargs["text_cfg"] = {"context_length": 8, "vocab_size": 16, "width": 32, "heads": 1, "layers": 1}
    # open_clip logs through the root logger, and warns "initialized randomly" for every tower
    # built from a config: expected here (the weights come from training or a checkpoint).
    quiet = _root_log_level(logging.ERROR if not cfg.vision_pretrained else logging.getLogger().level)
    try:
        with quiet:
            clip = open_clip.create_model(
                name,
                pretrained=cfg.vision_pretrained or None,
                pretrained_text=False,
                pretrained_image=False,
                **kwargs,
            )
    except RuntimeError as err:  # an unknown tag, a missing file, or a download refused offline
        raise ValueError(f"vision tower {name!r} with pretrained={cfg.vision_pretrained!r}: {err} "
                         f"(a tag needs network once; offline, give a local checkpoint file)") from err
    visual = clip.visual
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "conv1"):
        raise ValueError(f"{name}: the student needs an open_clip VisionTransformer tower")
    # The student reads the last block's patch tokens: the pooled projection and attention poolers
    # (CoCa configs) are never used, and unused parameters would stall DDP.
    visual.proj = None
    if getattr(visual, "attn_pool", None) is not None:
        visual.attn_pool = None
        visual.attn_pool_contrastive = None
        # its ln_post normalised the pooler's output; the patch tokens need one of their own width
        visual.ln_post = nn.LayerNorm(visual.conv1.out_channels)
    return visual


def _sum_first_conv(visual: nn.Module) -> None:
    """Make the patch embedding take one channel: a gray image repeated to RGB gives the same output."""
    old = visual.conv1
    new = nn.Conv2d(1, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    visual.conv1 = new


# ----------------------------------------------------------------------------- finding heads

class _QueryLayer(nn.Module):
    """Class queries cross-attend to the patch tokens; attention weights kept as the class maps."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, d = queries.shape
        n, h = tokens.shape[1], self.heads
        kv = self.ln_kv(tokens)
        q = self.q_proj(self.ln_q(queries)).view(b, c, h, d // h).transpose(1, 2)
        k = self.k_proj(kv).view(b, n, h, d // h).transpose(1, 2)
        v = self.v_proj(kv).view(b, n, h, d // h).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)  # (B, h, C, N)
        out = (attn @ v).transpose(1, 2).reshape(b, c, d)
        queries = queries + self.out_proj(out)
        queries = queries + self.mlp(self.ln_mlp(queries))
        return queries, attn.mean(dim=1)


class FindingQueryDecoder(nn.Module):
    """One learned query per finding (H-EGL's query network): per-finding logit and spatial map."""

    def __init__(self, in_dim: int, width: int, heads: int, layers: int, num_classes: int = NUM_FINDINGS):
        super().__init__()
        self.input_proj = nn.Linear(in_dim, width)
        self.queries = nn.Parameter(torch.randn(num_classes, width) * width**-0.5)
        self.layers = nn.ModuleList(_QueryLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        # One linear classifier per query (a grouped linear): query c only scores finding c.
        self.class_weight = nn.Parameter(torch.randn(num_classes, width) * width**-0.5)
        self.class_bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.input_proj(tokens)
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        attn = None
        for layer in self.layers:
            q, attn = layer(q, kv)
        states = self.norm(q)
        logits = (states * self.class_weight).sum(-1) + self.class_bias
        return logits, attn, states  # (B, C), (B, C, N), (B, C, width)


# ----------------------------------------------------------------------------- report decoder

class ReportDecoder(nn.Module):
    """CoCa's text side: open_clip TextTransformer (causal) then MultimodalTransformer over the image."""

    def __init__(self, vocab_size: int, image_dim: int, cfg: StudentConfig, context_length: int):
        super().__init__()
        from open_clip.transformer import MultimodalTransformer, TextTransformer

        w = cfg.decoder_width
        self.image_proj = nn.Sequential(nn.Linear(image_dim, w), nn.LayerNorm(w))
        # The finding queries' final states join the patch tokens in the decoder's memory, so the
        # report is written from the same evidence the 14 heads classify on.
        self.finding_proj = nn.Sequential(nn.Linear(cfg.head_width, w), nn.LayerNorm(w)) if cfg.decoder_reads_findings else None
        self.text = TextTransformer(
            context_length=context_length, vocab_size=vocab_size, width=w, heads=cfg.decoder_heads,
            layers=cfg.text_layers, output_dim=None, proj_type="none", pool_type="last", output_tokens=True,
        )
        self.multimodal = MultimodalTransformer(
            width=w, layers=cfg.multimodal_layers, heads=cfg.decoder_heads,
            context_length=context_length, output_dim=vocab_size,
        )
        _init_multimodal(self.multimodal, w, cfg.multimodal_layers)
        # Our own LM head so the hidden states (for the pooled embedding) are reachable.
        self.multimodal.text_projection = None
        self.lm_head = nn.Linear(w, vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=w**-0.5)

    def image_memory(self, image_tokens: torch.Tensor, finding_states: torch.Tensor | None = None) -> torch.Tensor:
        memory = self.image_proj(image_tokens)
        if self.finding_proj is not None:
            memory = torch.cat([memory, self.finding_proj(finding_states)], dim=1)
        return memory

    def hidden(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        # TextTransformer.forward applies its full-context causal mask to any length (3.3), so the
        # unimodal pass is spelled out here with the mask cut to the sequence.
        t, n = self.text, ids.shape[1]
        x = t.token_embedding(ids) + t.positional_embedding[:n]
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:n, :n]))
        return self.multimodal(memory, x)  # (B, L, width), final LayerNorm applied


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Exactly ``x`` forward (``x - x.detach()`` is zero); the gradient back through it is ``scale`` times."""
    return x if scale == 1.0 else x.detach() + scale * (x - x.detach())


def _init_multimodal(mm: nn.Module, width: int, layers: int) -> None:
    # open_clip's MultimodalTransformer.init_parameters reads a missing attribute (3.3); this is
    # the same scheme (CLIP's text-tower init) applied to its self- and cross-attention blocks.
    proj_std = width**-0.5 * (2 * max(layers, 1)) ** -0.5
    for block in list(mm.resblocks) + list(mm.cross_attn):
        nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def _block_repeated_ngrams(scores: torch.Tensor, generated: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid the tokens that would repeat an n-gram already in a row's generated text (as
    transformers' ``no_repeat_ngram_size``): greedy decoding of a small decoder otherwise loops
    ("possible mild atelectasis, possible mild atelectasis, ...")."""
    length = generated.shape[1]
    if length < n:
        return scores
    rows = generated.tolist()
    scores = scores.clone()
    for b, row in enumerate(rows):
        tail = tuple(row[length - n + 1:])
        banned = {row[i + n - 1] for i in range(length - n + 1) if tuple(row[i:i + n - 1]) == tail}
        if banned:
            scores[b, list(banned)] = float("-inf")
    return scores


# ----------------------------------------------------------------------------- the student

class StudentModel(nn.Module):
    def __init__(self, cfg: StudentConfig, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        context = cfg.report_context_tokens if cfg.report_context == "rationale" else 0
        self.tokens = TokenSpec(tokenizer, cfg.report_prefix, cfg.rationale_prefix, context)
        self.visual = build_vision_tower(cfg)
        if cfg.grayscale == "sum_conv":
            _sum_first_conv(self.visual)
        self.grid = tuple(self.visual.grid_size)
        self.image_size = tuple(self.visual.image_size)
        vision_width = self.visual.conv1.out_channels
        self.heads = FindingQueryDecoder(vision_width, cfg.head_width, cfg.head_heads, cfg.head_layers)
        self.decoder = ReportDecoder(cfg.vocab_size, vision_width, cfg, cfg.max_text_len + self.tokens.context_extra)
        self.embed_proj = nn.Linear(cfg.decoder_width, cfg.teacher_embed_dim) if cfg.teacher_embed_dim else None
        self.register_buffer("thresholds", torch.full((NUM_FINDINGS,), 0.5), persistent=False)

    # --- pieces

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float in [0, 1] -> patch tokens (B, N, width)."""
        x = (images - self.cfg.image_mean) / self.cfg.image_std
        if self.cfg.grayscale == "repeat":
            x = x.expand(-1, 3, -1, -1)
        out = self.visual.forward_intermediates(
            x, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
        )
        return out["image_intermediates"][-1]

    def classify(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch tokens -> finding logits (B, 14), maps (B, 14, h, w), query states (B, 14, width)."""
        logits, attn, states = self.heads(tokens)
        return logits, attn.reshape(attn.shape[0], attn.shape[1], *self.grid), states

    # --- training forward

    def forward(
        self,
        images: torch.Tensor,
        report_ids: torch.Tensor | None = None,
        rationale_ids: torch.Tensor | None = None,
        rationale_mask: torch.Tensor | None = None,
        with_embedding: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced pass. ``*_ids`` are full sequences (B, L); logits predict ids[:, 1:]."""
        tokens = self.encode_image(images)
        logits, maps, states = self.classify(tokens)
        out = {"logits": logits, "maps": maps}
        if report_ids is None and rationale_ids is None:
            return out
        s = self.cfg.text_grad_to_tower
        memory = self.decoder.image_memory(_scale_grad(tokens, s), _scale_grad(states, s))
        if report_ids is not None:
            out["report_logits"] = self.decoder.lm_head(self.decoder.hidden(memory, report_ids[:, :-1]))
        if rationale_ids is not None:
            hidden = self.decoder.hidden(memory, rationale_ids[:, :-1])
            out["rationale_logits"] = self.decoder.lm_head(hidden)
            if with_embedding:
                if self.embed_proj is None:
                    raise ValueError("feature KD needs teacher_embed_dim in the student config")
                if self.cfg.embedding_pool == "prompt":
                    # hidden[:, i] has read ids[:, :i+1]; at the last prompt token no rationale yet
                    pooled = hidden[:, len(self.tokens.prompts["rationale"]) - 1]
                else:
                    mask = rationale_mask[:, :-1].to(hidden.dtype).unsqueeze(-1)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                out["embedding"] = self.embed_proj(pooled)
        return out

    # --- generation

    @torch.no_grad()
    def _greedy(self, memory: torch.Tensor, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        """Greedy continuation of equal-length prompts; each row's new ids, up to (not with) eos."""
        spec = self.tokens
        width = {len(p) for p in prompts}
        if len(width) != 1:
            raise ValueError(f"prompts of one batch must have the same length, got {sorted(width)}")
        ids = torch.tensor(prompts, device=memory.device)
        start = ids.shape[1]
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=memory.device)
        block = self.cfg.no_repeat_ngram_size
        while ids.shape[1] < start + max_new and not bool(done.all()):
            scores = self.decoder.lm_head(self.decoder.hidden(memory, ids)[:, -1])
            if block:
                scores = _block_repeated_ngrams(scores, ids[:, start:], block)
            nxt = scores.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, spec.pad_id), nxt)
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
            done |= nxt == spec.eos_id
        rows = []
        for row in ids[:, start:].tolist():
            rows.append(row[: row.index(spec.eos_id)] if spec.eos_id in row else row)
        return rows

    @torch.no_grad()
    def generate_texts(self, tokens: torch.Tensor, max_new_tokens: int = 64, rationales: bool = True) -> tuple[list[str], list[str]]:
        """Greedy reports and rationales from patch tokens (B, N, width). Explaining first
        (``report_context: rationale``), the rationale is written first and each report after it."""
        spec = self.tokens
        memory = self.decoder.image_memory(tokens, self.classify(tokens)[2])
        n = tokens.shape[0]

        def budget(task: str, want: int) -> int:
            return max(0, min(want, self.cfg.max_text_len - len(spec.prompts[task])))

        rationale_ids = None
        if rationales or spec.context_tokens:
            want = max_new_tokens if rationales else spec.context_tokens
            rationale_ids = self._greedy(memory, [spec.prompts["rationale"]] * n, budget("rationale", want))
        contexts = rationale_ids if spec.context_tokens else [None] * n
        report_ids = self._greedy(memory, [spec.report_prompt(c) for c in contexts], budget("report", max_new_tokens))
        reports = [spec.decode(r) for r in report_ids]
        return reports, [spec.decode(r) for r in rationale_ids] if rationales else []

    def generate(self, tokens: torch.Tensor, task: str, max_new_tokens: int = 64) -> list[str]:
        """Greedy decoding of one task ("report" or "rationale") from patch tokens (B, N, width)."""
        if task not in self.tokens.prompts:
            raise ValueError(f"unknown task {task!r}: 'report' or 'rationale'")
        reports, rationales = self.generate_texts(tokens, max_new_tokens, rationales=task == "rationale")
        return rationales if task == "rationale" else reports

    def predict(self, images, batch_size: int = 32, max_new_tokens: int = 64, texts: bool = True,
                rationales: bool = True) -> dict[str, Any]:
        from student.inference import predict

        return predict(self, images, batch_size=batch_size, max_new_tokens=max_new_tokens, texts=texts,
                       rationales=rationales)


def create_student(cfg: StudentConfig, tokenizer) -> StudentModel:
    """The one factory: the config plus the teacher's tokenizer (shared vocabulary)."""
    if cfg.vocab_size is None:
        cfg = dataclasses.replace(cfg, vocab_size=len(tokenizer))
    elif cfg.vocab_size != len(tokenizer):
        raise ValueError(
            f"the student was built for a vocabulary of {cfg.vocab_size} tokens; this tokenizer has {len(tokenizer)}"
        )
    return StudentModel(cfg, tokenizer)

