"""The student's vision towers: one small interface over open_clip's three tower families.

Every tower is built from an open_clip model config (built in, shipped in ``student/configs/``,
or a JSON path) and answers the same three questions:

* ``tower(x)`` -> tokens (B, N, C): the spatial feature map the finding heads and the report
  decoder read, row-major over ``tower.grid`` = (h, w);
* ``tower.grid``, ``tower.width`` (C), ``tower.image_size``;
* ``tower.feature_map``: the module whose output Grad-CAM hooks (an identity on that same
  feature map, so the explained activations are exactly what the heads read), with
  ``tower.cam_reshape`` turning its output into (B, C, h, w) (None when it already is).

Families (``tower_family``): ``vit`` (open_clip VisionTransformer: the last block's patch tokens,
layer-normed), ``modified_resnet`` (open_clip's CLIP ResNet) and ``timm`` (any timm model through
open_clip's TimmModel, ``timm_model_pretrained`` forced off). A CNN tower reads the stage chosen
by ``feature_stride`` (8 gives a 16x16 grid at 128²; None: its last stage); the stages after it
are pruned (a finer grid then costs less), or, with ``feature_merge``, added into it
upsampled (a feature pyramid's top-down sum: the fine grid with the deep stages' context). CNN tokens get a learned position embedding (the
heads' and the decoder's attention is otherwise blind to where a token is: left vs right).
"""
from __future__ import annotations

import contextlib
import logging
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from student.config import StudentConfig

CONFIG_DIR = Path(__file__).with_name("configs")
TINY_TEXT = {"context_length": 8, "vocab_size": 16, "width": 32, "heads": 1, "layers": 1}


class VisionTower(nn.Module):
    """The shared base: subclasses set ``family`` and implement ``feature_map_of`` (NCHW or NLC)."""

    family = ""

    def __init__(self, model: nn.Module, cfg: StudentConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.feature_map = nn.Identity()  # the Grad-CAM hook point: what the heads read
        self.cam_reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
        size = model.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.grid: tuple[int, int] = (0, 0)
        self.width = 0

    # --- subclasses

    def feature_map_of(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def first_conv_name(self) -> str:
        raise NotImplementedError

    # --- shared

    def _probe(self) -> None:
        """Grid and width from one forward pass of a blank image (exact for any stride/padding)."""
        training = self.model.training
        self.model.eval()  # batch norm on a 1x1 map cannot train on one image
        with torch.no_grad():  # before the first conv is summed to one channel
            fmap = self.feature_map_of(torch.zeros(1, 3, *self.image_size))
        self.model.train(training)
        if fmap.ndim == 4:
            self.width, self.grid = int(fmap.shape[1]), (int(fmap.shape[2]), int(fmap.shape[3]))
        else:
            self.width = int(fmap.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.feature_map(self.feature_map_of(x))
        if fmap.ndim == 4:  # (B, C, h, w) -> (B, h*w, C), row-major as vit_reshape_transform lays it out
            return fmap.flatten(2).transpose(1, 2)
        return fmap

    def sum_first_conv(self) -> None:
        """One input channel: the first conv's weights summed over RGB (a gray image repeated to
        three channels gives the same output, at a third of the first layer's compute)."""
        name = self.first_conv_name()
        old = self.model.get_submodule(name)
        if not isinstance(old, nn.Conv2d) or old.in_channels != 3:
            raise ValueError(f"{self.family} tower: {name!r} is not a 3-channel Conv2d, cannot sum it to one channel")
        new = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
                        bias=old.bias is not None, padding_mode=old.padding_mode)
        with torch.no_grad():
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, leaf, new)


class ViTTower(VisionTower):
    """open_clip VisionTransformer: the last block's patch tokens after ln_post (class token dropped)."""

    family = "vit"

    def __init__(self, model: nn.Module, cfg: StudentConfig):
        super().__init__(model, cfg)
        if cfg.feature_stride not in (None, model.patch_size[0]):
            raise ValueError(f"a ViT tower's feature map has the stride of its patches ({model.patch_size[0]}), "
                             f"not feature_stride {cfg.feature_stride}")
        # The pooled projection and attention poolers (CoCa configs) are never used, and unused
        # parameters would stall DDP.
        model.proj = None
        if getattr(model, "attn_pool", None) is not None:
            model.attn_pool = None
            model.attn_pool_contrastive = None
            # its ln_post normalised the pooler's output; the patch tokens need one of their own width
            model.ln_post = nn.LayerNorm(model.conv1.out_channels)
        self.grid = tuple(int(g) for g in model.grid_size)
        self.width = int(model.conv1.out_channels)
        from kdistill.saliency.gradcam import vit_reshape_transform

        self.cam_reshape = vit_reshape_transform(num_prefix_tokens=0, grid=self.grid)

    def first_conv_name(self) -> str:
        return "conv1"

    def feature_map_of(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(x, indices=1, normalize_intermediates=True, intermediates_only=True,
                                               output_fmt="NLC")
        return out["image_intermediates"][-1]


class _CNNTower(VisionTower):
    """A CNN read at one stage (``feature_stride``), optionally with the deeper stages merged into
    it (``feature_merge``): each through a 1x1 conv to the stage's width, upsampled bilinearly to
    its grid and added, a feature pyramid's top-down sum. Channels-last (faster convolutions on
    CPU), plus a learned position embedding of the tokens. Subclasses set ``self.indices`` (the
    stages read, the chosen one first) and implement ``stage_maps``."""

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _stages(self, reductions: list[int]) -> None:
        self.stage = _stage_index(reductions, self.cfg.feature_stride, self.family)
        last = len(reductions) - 1 if self.cfg.feature_merge else self.stage
        self.indices = list(range(self.stage, last + 1))

    def _finish(self) -> None:
        self.model.to(memory_format=torch.channels_last)
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            widths = [int(m.shape[1]) for m in self.stage_maps(torch.zeros(1, 3, *self.image_size))]
        self.model.train(training)
        self.lateral = nn.ModuleList(nn.Conv2d(w, widths[0], 1) for w in widths[1:]) if len(widths) > 1 else None
        if self.lateral is not None:
            self.lateral.to(memory_format=torch.channels_last)
        self._probe()
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], self.width) * 0.02)

    def feature_map_of(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.stage_maps(x)
        out = maps[0]
        for conv, deeper in zip(self.lateral or (), maps[1:]):
            out = out + F.interpolate(conv(deeper), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last)) + self.pos_embed

    def sum_first_conv(self) -> None:
        super().sum_first_conv()
        self.model.to(memory_format=torch.channels_last)


def _stage_index(reductions: list[int], stride: int | None, family: str) -> int:
    if stride is None:
        return len(reductions) - 1
    if stride not in reductions:
        raise ValueError(f"{family} tower: no stage of stride {stride} (its stages have strides {reductions})")
    return len(reductions) - 1 - reductions[::-1].index(stride)  # the deepest stage of that stride


class ModifiedResNetTower(_CNNTower):
    """open_clip's CLIP ResNet (3-conv stem, anti-aliased strides): its attention pool is dropped."""

    family = "modified_resnet"
    STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, model: nn.Module, cfg: StudentConfig):
        super().__init__(model, cfg)
        self._stages([4, 4, 8, 16, 32])
        model.attnpool = None
        for name in self.STAGES[self.indices[-1] + 1:]:
            setattr(model, name, None)
        self._finish()

    def first_conv_name(self) -> str:
        return "conv1"

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, name in enumerate(self.STAGES[: self.indices[-1] + 1]):
            x = getattr(self.model, name)(x)
            if i in self.indices:
                maps.append(x)
        return maps


class TimmTower(_CNNTower):
    """A timm model (open_clip TimmModel's ``trunk``) read at one of its ``feature_info`` stages."""

    family = "timm"

    def __init__(self, model: nn.Module, cfg: StudentConfig):
        super().__init__(model, cfg)
        trunk = model.trunk
        if not hasattr(trunk, "forward_intermediates") or not getattr(trunk, "feature_info", None):
            raise ValueError(f"timm model {type(trunk).__name__}: the student needs forward_intermediates and feature_info")
        self._stages([int(f["reduction"]) for f in trunk.feature_info])
        trunk.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        model.head = nn.Identity()  # open_clip's pooling / projection: unused
        self._finish()

    def first_conv_name(self) -> str:
        name = self.model.trunk.default_cfg.get("first_conv")
        name = name[0] if isinstance(name, (list, tuple)) else name
        if not name:
            name = next(n for n, m in self.model.trunk.named_modules() if isinstance(m, nn.Conv2d))
        return f"trunk.{name}"

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.trunk.forward_intermediates(x, indices=self.indices, norm=False, intermediates_only=True,
                                                      output_fmt="NCHW")


# ----------------------------------------------------------------------------- building

@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


def open_clip_config(name: str) -> tuple[str, dict[str, Any]]:
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


def tower_family(vision_cfg: dict[str, Any]) -> str:
    if vision_cfg.get("timm_model_name"):
        return "timm"
    return "modified_resnet" if isinstance(vision_cfg.get("layers"), (list, tuple)) else "vit"


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_tower_weights(model: nn.Module, family: str, path: Path) -> None:
    """A tower's own state dict (a timm checkpoint for timm towers): every tower weight must be in
    it; only a classifier head (timm's ``fc`` / ``head`` / ``classifier``) may be left over."""
    state = _read_weights(path)
    target = model.trunk if family == "timm" else model
    missing, unexpected = target.load_state_dict(state, strict=False)
    classifier = ()
    if family == "timm":
        head = target.default_cfg.get("classifier") or ""
        classifier = tuple(head) if isinstance(head, (list, tuple)) else (head,)
    unexpected = [k for k in unexpected if not any(k.startswith(f"{c}.") for c in classifier if c)]
    if family == "vit":
        missing = [k for k in missing if k != "proj"]
        unexpected = [k for k in unexpected if k != "proj"]
    if missing or unexpected:
        raise ValueError(f"{path}: not weights of this {family} tower: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _is_open_clip_checkpoint(path: Path) -> bool:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    else:
        keys = list(_read_weights(path))
    return any(k.startswith("visual.") for k in keys)


def build_tower(cfg: StudentConfig) -> VisionTower:
    """The vision tower of an open_clip model config, with optional pretrained weights.

    ``vision_pretrained``: a local file, either a whole open_clip model's checkpoint (keys
    ``visual.*``) or the tower's own state dict (a timm model's, e.g. its ``model.safetensors``;
    a ViT's or CLIP ResNet's ``visual`` weights); or an open_clip tag (fetched by open_clip, so
    network once). A timm trunk never fetches its own weights (``timm_model_pretrained`` is off).
    The text tower open_clip builds alongside is dropped (a tiny one unless a whole checkpoint is
    loaded).
    """
    import open_clip

    name, model_cfg = open_clip_config(cfg.vision_model)
    vision_cfg = {**model_cfg["vision_cfg"], **cfg.vision_overrides}
    family = tower_family(vision_cfg)
    if family == "timm":
        vision_cfg["timm_model_pretrained"] = False
    source = cfg.vision_pretrained
    whole = None
    if source:
        path = Path(source).expanduser()
        if path.is_file():
            whole = _is_open_clip_checkpoint(path)
        elif path.suffix in (".safetensors", ".bin", ".pt", ".pth") or "/" in source:
            raise ValueError(f"vision_pretrained {source!r}: no such file")
        else:
            whole = True  # an open_clip tag
    kwargs: dict[str, Any] = {"vision_cfg": vision_cfg}
    if not whole:
        kwargs["text_cfg"] = TINY_TEXT
    # open_clip logs through the root logger, and warns "initialized randomly" for every tower
    # built from a config: expected here (the weights come from training or a checkpoint).
    quiet = _root_log_level(logging.ERROR if not whole else logging.getLogger().level)
    try:
        with quiet:
            clip = open_clip.create_model(name, pretrained=source if whole else None, pretrained_text=False,
                                          pretrained_image=False, **kwargs)
    except RuntimeError as err:  # an unknown tag, a missing file, or a download refused offline
        raise ValueError(f"vision tower {name!r} with pretrained={source!r}: {err} "
                         f"(a tag needs network once; offline, give a local checkpoint file)") from err
    visual = clip.visual
    if source and not whole:
        _load_tower_weights(visual, family, Path(source).expanduser())
    tower_cls = {"vit": ViTTower, "modified_resnet": ModifiedResNetTower, "timm": TimmTower}[family]
    if family == "vit" and not hasattr(visual, "forward_intermediates"):
        raise ValueError(f"{name}: not an open_clip VisionTransformer tower")
    tower = tower_cls(visual, cfg)
    if cfg.grayscale == "sum_conv":
        tower.sum_first_conv()
    return tower
