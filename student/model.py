"""The student network: a vision tower (student.towers: ViT, CLIP ResNet or timm CNN, all from open_clip
configs), the finding query decoder, a CoCa-style report decoder.

``create_student(cfg, tokenizer)`` is the one factory. The model takes float images in [0, 1],
shape (B, 1, H, W), at ``image_size``; ``predict`` (student.inference) accepts anything looser.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from kdistill.labels import NUM_FINDINGS
from student.config import StudentConfig
from student.text import TokenSpec
from student.towers import CONFIG_DIR, build_tower

__all__ = ["CONFIG_DIR", "CamFeatures", "FindingQueryDecoder", "ReportDecoder", "StudentModel", "create_student"]


# ----------------------------------------------------------------------------- finding heads

class _QueryLayer(nn.Module):
    """Class queries cross-attend to the feature-map tokens; attention weights kept as the class maps."""

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
        # The finding queries' final states join the image tokens in the decoder's memory, so the
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

@dataclasses.dataclass
class CamFeatures:
    """The feature map the finding logits were computed from (``features``: NCHW, or ViT tokens
    that ``reshape`` turns into (B, C, h, w)). A plain class on purpose: DDP passes the output's
    tensors (pytree leaves, lists, dicts) through its sink function, which would hand the loss a
    copy the logits do not depend on; an object it does not know stays untouched."""

    features: torch.Tensor
    reshape: Any = None


class StudentModel(nn.Module, PyTorchModelHubMixin, library_name="kdistill",
                   tags=["chest-x-ray", "explainable-ai", "research-only"]):
    """Tower, finding heads and (with a tokenizer) the report decoder. Without a tokenizer (a
    dataset without reports: NIH, CheXpert) the student is its finding heads only: ``has_text``
    is False, it writes no report and its text losses must be off.

    ``StudentModel.from_pretrained(folder_or_hub_id)`` and ``model.save_pretrained(folder)``
    (huggingface_hub's mixin) read and write the same checkpoint folder as ``student.load`` and
    the training loop (student.checkpoint): config.json (``model_type: kdistill-student``),
    model.safetensors, the tokenizer, thresholds.json."""

    def __init__(self, cfg: StudentConfig, tokenizer=None):
        super().__init__()
        self.tokenizer = tokenizer
        context = cfg.report_context_tokens if cfg.report_context == "rationale" else 0
        self.tokens = TokenSpec(tokenizer, cfg.report_prefix, cfg.rationale_prefix, context) if tokenizer else None
        self.visual = build_tower(cfg)  # student.towers: tokens (B, N, C) on visual.grid
        self.grid = tuple(self.visual.grid)
        if self.grid[0] % cfg.decoder_pool or self.grid[1] % cfg.decoder_pool:
            raise ValueError(f"decoder_pool {cfg.decoder_pool} does not divide the {self.grid} feature map")
        if cfg.map_grid is not None and tuple(cfg.map_grid) != self.grid:
            raise ValueError(f"the config records finding maps on a {tuple(cfg.map_grid)} grid; "
                             f"this tower gives {self.grid}")
        self.cfg = dataclasses.replace(cfg, map_grid=list(self.grid))  # what config.json records
        self.image_size = tuple(self.visual.image_size)
        vision_width = self.visual.width
        self.heads = FindingQueryDecoder(vision_width, cfg.head_width, cfg.head_heads, cfg.head_layers)
        self.decoder = (ReportDecoder(cfg.vocab_size, vision_width, cfg, cfg.max_text_len + self.tokens.context_extra)
                        if self.tokens is not None else None)
        self.embed_proj = (nn.Linear(cfg.decoder_width, cfg.teacher_embed_dim)
                           if cfg.teacher_embed_dim and self.decoder is not None else None)
        self.register_buffer("thresholds", torch.full((NUM_FINDINGS,), 0.5), persistent=False)

    @property
    def has_text(self) -> bool:
        """Whether this student writes reports and rationales (it was built with a tokenizer)."""
        return self.decoder is not None

    # --- pieces

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float in [0, 1] -> feature-map tokens (B, N, width), row-major over ``grid``."""
        x = (images - self.cfg.image_mean) / self.cfg.image_std
        if self.cfg.grayscale == "repeat":
            x = x.expand(-1, 3, -1, -1)
        return self.visual(x)

    def classify(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens -> finding logits (B, 14), maps (B, 14, h, w), query states (B, 14, width)."""
        logits, attn, states = self.heads(tokens)
        return logits, attn.reshape(attn.shape[0], attn.shape[1], *self.grid), states

    def decoder_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens the report decoder reads: the feature map average-pooled by ``decoder_pool``
        (a 16x16 map read whole would cost the decoder's cross-attention 4x an 8x8 one)."""
        k = self.cfg.decoder_pool
        if k == 1:
            return tokens
        b, _, c = tokens.shape
        fmap = tokens.transpose(1, 2).reshape(b, c, *self.grid)
        return F.avg_pool2d(fmap, k).flatten(2).transpose(1, 2)

    def gradcam_target(self) -> tuple[list[nn.Module], Any]:
        """Grad-CAM's layer and reshape for this tower (``kdistill.saliency.GradCAM.from_model``):
        the feature map the finding heads read, on ``grid``."""
        return [self.visual.feature_map], self.visual.cam_reshape

    # --- training forward

    def forward(
        self,
        images: torch.Tensor,
        report_ids: torch.Tensor | None = None,
        rationale_ids: torch.Tensor | None = None,
        rationale_mask: torch.Tensor | None = None,
        with_embedding: bool = False,
        with_features: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced pass. ``*_ids`` are full sequences (B, L); logits predict ids[:, 1:].
        ``with_features`` adds ``cam_features`` (``CamFeatures``): the tower's output at its Grad-CAM
        point (``gradcam_target``) that the logits were computed from, and the tower's
        ``cam_reshape``: what the Grad-CAM Dice loss needs."""
        if with_features:
            captured: list[torch.Tensor] = []
            hook = self.visual.feature_map.register_forward_hook(lambda _m, _i, o: captured.append(o))
            try:
                tokens = self.encode_image(images)
            finally:
                hook.remove()
        else:
            tokens = self.encode_image(images)
        logits, maps, states = self.classify(tokens)
        out = {"logits": logits, "maps": maps}
        if with_features:
            out["cam_features"] = CamFeatures(captured[-1], self.visual.cam_reshape)
        if report_ids is None and rationale_ids is None:
            return out
        if self.decoder is None:
            raise ValueError("this student has no report decoder (built without a tokenizer): train it with "
                             "loss.rep=0 loss.kd=0 loss.emb=0 loss.tok=0")
        s = self.cfg.text_grad_to_tower
        memory = self.decoder.image_memory(self.decoder_tokens(_scale_grad(tokens, s)), _scale_grad(states, s))
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
        """Greedy reports and rationales from image tokens (B, N, width). Explaining first
        (``report_context: rationale``), the rationale is written first and each report after it."""
        spec = self.tokens
        memory = self.decoder.image_memory(self.decoder_tokens(tokens), self.classify(tokens)[2])
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

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, map_location="cpu", **_unused):
        """The mixin's loader: a local folder, else a hub repository fetched by huggingface_hub
        (only when the caller names one; tests and the pipeline pass folders)."""
        from pathlib import Path

        from student.checkpoint import load

        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, local_files_only=local_files_only,
                                            token=token))
        return load(folder, device=map_location)

    def _save_pretrained(self, save_directory) -> None:
        from student.checkpoint import save_pretrained

        save_pretrained(self, save_directory)

    def predict(self, images, batch_size: int = 32, max_new_tokens: int = 64, texts: bool = True,
                rationales: bool = True) -> dict[str, Any]:
        from student.inference import predict

        return predict(self, images, batch_size=batch_size, max_new_tokens=max_new_tokens, texts=texts,
                       rationales=rationales)


def create_student(cfg: StudentConfig, tokenizer=None) -> StudentModel:
    """The one factory: the config plus the teacher's tokenizer (shared vocabulary); no tokenizer
    gives a student of finding heads only (for datasets without reports)."""
    if tokenizer is None:
        return StudentModel(dataclasses.replace(cfg, vocab_size=None), None)
    if cfg.vocab_size is None:
        cfg = dataclasses.replace(cfg, vocab_size=len(tokenizer))
    elif cfg.vocab_size != len(tokenizer):
        raise ValueError(
            f"the student was built for a vocabulary of {cfg.vocab_size} tokens; this tokenizer has {len(tokenizer)}"
        )
    return StudentModel(cfg, tokenizer)

