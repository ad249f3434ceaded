"""The student's architecture config: everything needed to rebuild the network from ``config.json``."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal


MODEL_TYPE = "kdistill-student"


@dataclasses.dataclass
class StudentConfig:
    # What config.json is, for readers on the Hugging Face side (as transformers' "model_type");
    # a checkpoint folder of another kind is refused by name rather than half-built.
    model_type: str = MODEL_TYPE
    # Vision tower: an open_clip model config name (built-in, or a JSON shipped in student/configs/,
    # or a path to such a JSON file); only its vision tower is kept. Its family follows from the
    # config (student.towers): a ViT, open_clip's CLIP ResNet (layers as a list), or a timm model
    # (timm_model_name; never fetched: timm_model_pretrained is forced off).
    vision_model: str = "kdistill-vit-tiny"
    # A local weights file: a whole open_clip model's checkpoint (keys "visual.*") or the tower's
    # own state dict (a timm model's for timm towers); or an open_clip tag (needs network once).
    vision_pretrained: str | None = None
    # Keys merged into the config's vision_cfg (e.g. {"image_size": 64, "layers": 2}).
    vision_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    # CNN towers: the stage whose feature map the heads read, by its stride (8: a 16x16 grid at
    # 128²); the later stages are pruned. None: the last stage. A ViT's stride is its patch size.
    feature_stride: int | None = None
    # CNN towers: keep the deeper stages too, each through a 1x1 conv to that stage's width,
    # upsampled to its grid and added (a feature pyramid's top-down sum, no smoothing conv).
    feature_merge: bool = False
    # Grayscale input: "repeat" to 3 channels, or "sum_conv": the patch conv takes 1 channel, its
    # weights summed over RGB (same function for a gray image, a third of the first-layer compute).
    grayscale: Literal["repeat", "sum_conv"] = "sum_conv"
    image_mean: float = 0.5
    image_std: float = 0.25
    # CoCa-style text decoder: unimodal causal layers, then multimodal layers cross-attending to the image.
    decoder_width: int = 128
    decoder_heads: int = 4
    text_layers: int = 1
    multimodal_layers: int = 2
    max_text_len: int = 96
    decoder_reads_findings: bool = True  # finding-query states in the decoder's memory
    # The decoder reads the feature map average-pooled k x k (2: a 16x16 map as 8x8 = 64 tokens);
    # the finding heads always read it whole.
    decoder_pool: int = 1
    # Scale of the text losses' gradient where it enters the vision tower (the decoder's memory);
    # the forward pass is unchanged. 1: the text objectives train the tower fully; 0: the tower
    # learns from the finding heads only and the text objectives train the decoder (a locked
    # tower, as in LiT). Under Adam the tower's update is normalised by the sum of every gradient
    # it receives, so text gradients take the finding heads' share of the tower's update.
    text_grad_to_tower: float = 1.0
    # Section order of the report the student writes. Impression first: the label-dense summary
    # survives when a long report is cut at max_text_len.
    report_order: Literal["impression_first", "findings_first"] = "impression_first"
    # Rationale targets: "conclusion_first" moves the teacher's closing summary (from the last
    # ``rationale_marker``) to the front, so the finding list survives a cut at max_text_len
    # (the demo teacher's conclusion starts at token ~60 on median and was cut in 61% of rationales
    # at 64 tokens); "as_written" distils the text unchanged.
    rationale_order: Literal["conclusion_first", "as_written"] = "conclusion_first"
    rationale_marker: str = "Conclusion:"
    report_prefix: str = "<report>"
    rationale_prefix: str = "<rationale>"
    # "rationale": explain, then report. The report is written after the first
    # ``report_context_tokens`` tokens of the student's own rationale (teacher-forced with the
    # teacher's during training), so the report follows from the explanation it comes with and
    # the canonical finding list the rationale opens with (conclusion_first) plans the report.
    # Needs rationale distillation (w_kd > 0); without it training falls back to "none".
    # "none": the report is written from the image alone.
    report_context: Literal["none", "rationale"] = "none"
    report_context_tokens: int = 32
    # Greedy decoding never repeats an n-gram of this many tokens within a text (0: off).
    no_repeat_ngram_size: int = 0
    # Finding heads: one learned query per finding cross-attending to the patch tokens.
    head_width: int = 128
    head_heads: int = 4
    head_layers: int = 1
    # Feature KD: which student state is aligned with the teacher's rationale embedding.
    # "prompt": the decoder's state at the last prompt token of the rationale sequence, which has
    # seen the image (cross-attention) but no rationale token, so matching the teacher's embedding
    # must come from the image: cross-modal distillation into the pathway that starts every text.
    # "rationale_tokens": the mean over the teacher-forced rationale positions (it can be matched
    # from the rationale's own tokens, leaving the image side untaught).
    embedding_pool: Literal["prompt", "rationale_tokens"] = "prompt"
    # Teacher embedding size for feature KD (set from the rationale cache); None: no projection.
    teacher_embed_dim: int | None = None
    # Filled by create_student from the tokenizer; checked again on load.
    vocab_size: int | None = None
    # (h, w) of the feature map = of the finding maps; filled by create_student from the tower and
    # checked again on load, so readers of config.json know the maps' grid without the model.
    map_grid: list[int] | None = None

    def validate(self) -> None:
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"model_type {self.model_type!r}: not a kdistill student (expected {MODEL_TYPE!r})")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"decoder_width {self.decoder_width} is not divisible by decoder_heads {self.decoder_heads}")
        if self.head_width % self.head_heads:
            raise ValueError(f"head_width {self.head_width} is not divisible by head_heads {self.head_heads}")
        if self.max_text_len < 8:
            raise ValueError(f"max_text_len must be at least 8, got {self.max_text_len}")
        if self.image_std <= 0:
            raise ValueError("image_std must be positive")
        if not 0.0 <= self.text_grad_to_tower <= 1.0:
            raise ValueError(f"text_grad_to_tower must be in [0, 1], got {self.text_grad_to_tower}")
        if self.decoder_pool < 1:
            raise ValueError(f"decoder_pool must be >= 1, got {self.decoder_pool}")
        if self.feature_stride is not None and self.feature_stride < 1:
            raise ValueError(f"feature_stride must be a positive stride, got {self.feature_stride}")
        if self.map_grid is not None and (len(self.map_grid) != 2 or min(self.map_grid) < 1):
            raise ValueError(f"map_grid must be [h, w], got {self.map_grid}")
        if self.report_context == "rationale" and self.report_context_tokens < 1:
            raise ValueError(f"report_context_tokens must be >= 1, got {self.report_context_tokens}")
