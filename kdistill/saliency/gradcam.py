"""Grad-CAM (Selvaraju et al., 2017) over one or more target layers, CNN or ViT.

Same recipe as pytorch-grad-cam's ``GradCAM``: channel weights are the spatial mean of the
gradient of the target score w.r.t. the layer's activations; the map is ReLU(sum_c w_c A_c),
min-max normalised, bilinearly upsampled, averaged over layers and normalised again. Our
differences, all deliberate:

* the score is the finding's logit. pytorch-grad-cam's ``ClassifierOutputTarget`` uses the
  logit too; the finding's probability sigmoid(z) would give the same map, because its
  gradient is the logit's times sigmoid'(z) > 0, one positive factor per image that the
  normalisation removes. The logit cannot saturate to a zero gradient, sigmoid can.
* hooks live only for the duration of one call (no leaked hooks, no ``with`` needed);
* the model's train/eval mode is restored afterwards;
* ``attribute(..., create_graph=True)`` keeps the graph, so a Grad-CAM Dice loss
  (explanation-guided learning) can backpropagate through the map.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from kdistill.saliency.base import BaseAttribution, finding_indices, model_device, model_logits, normalise_maps, \
    upsample


def vit_reshape_transform(num_prefix_tokens: int = 1, grid: tuple[int, int] | None = None,
                          batch_first: bool = True) -> Callable[[Tensor], Tensor]:
    """Reshape ViT token activations (B, N, C) to a CNN-like grid (B, C, h, w).

    Drops the first ``num_prefix_tokens`` tokens (class token, plus register/distillation
    tokens where the model has them), then lays the patch tokens out row-major on a
    ``grid`` = (h, w) (a square grid when None), as pytorch-grad-cam's ViT tutorial does.
    ``batch_first=False`` for layers that emit (N, B, C) (older open_clip transformers).
    """
    def transform(tokens: Tensor) -> Tensor:
        if tokens.ndim != 3:
            raise ValueError(f"ViT activations must be (B, tokens, channels), got {tuple(tokens.shape)}")
        if not batch_first:
            tokens = tokens.transpose(0, 1)
        patches = tokens[:, num_prefix_tokens:, :]
        n = patches.shape[1]
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} patch tokens do not form a square grid; pass grid=(h, w)")
            h, w = side, side
        else:
            h, w = grid
            if h * w != n:
                raise ValueError(f"grid {grid} does not hold {n} patch tokens")
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)

    return transform


def _resolve_layers(model: nn.Module, target_layers: nn.Module | str | Sequence[nn.Module | str]) -> list[nn.Module]:
    """Modules given directly or by dotted name (``"encoder.layers.3"``), resolved on this model."""
    if isinstance(target_layers, (nn.Module, str)):
        target_layers = [target_layers]
    layers = [model.get_submodule(t) if isinstance(t, str) else t for t in target_layers]
    if not layers:
        raise ValueError("GradCAM needs at least one target layer")
    return layers


def cam_from_gradients(act: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM's map (B, h, w) from a layer's activations and the score's gradient, both (B, C, h, w):
    ReLU of the activations weighted by the spatial mean of the gradient (before normalisation)."""
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * act).sum(dim=1))


class GradCAM(BaseAttribution):
    """Grad-CAM for ``model(images) -> logits (B, K)`` or a dict with ``"logits"``.

    ``target_layers``: a module, a dotted module name, or a list of them (maps averaged, as in
    pytorch-grad-cam). ``reshape_transform`` turns a layer's output into (B, C, h, w), e.g.
    ``vit_reshape_transform()`` for ViT token outputs.
    """

    needs_grad = True

    def __init__(self, model: nn.Module, target_layers: nn.Module | str | Sequence[nn.Module | str],
                 reshape_transform: Callable[[Tensor], Tensor] | None = None):
        super().__init__(model)
        self.target_layers = _resolve_layers(model, target_layers)
        self.reshape_transform = reshape_transform

    @classmethod
    def from_model(cls, model: nn.Module) -> "GradCAM":
        """Grad-CAM at the layer a model names for it: ``model.gradcam_target()`` returns
        (target layers, reshape_transform or None). The student answers with its tower's feature
        map, the one its finding heads read (a CNN's chosen stage, a ViT's patch tokens)."""
        target = getattr(model, "gradcam_target", None)
        if target is None:
            raise TypeError(f"{type(model).__name__} has no gradcam_target(); give GradCAM its target_layers")
        layers, reshape = target()
        return cls(model, layers, reshape_transform=reshape)

    def attribute(self, images: Tensor, finding: int | Tensor, create_graph: bool = False) -> Tensor:
        """Maps (B, H, W) as a tensor. ``create_graph=True`` is for training losses on the maps:
        the model stays in its current (train) mode and the result is differentiable."""
        if not create_graph:
            return super().attribute(images, finding)
        # Differentiable path: keep the graph through the weights and the normalisation.
        device = model_device(self.model)
        images = images.to(device)
        idx = finding_indices(finding, images.shape[0], device)
        with torch.enable_grad():
            maps = self._raw_maps(images, idx, create_graph=True)
        return normalise_maps(maps)

    def _raw_maps(self, images: Tensor, idx: Tensor, create_graph: bool = False) -> Tensor:
        captured: dict[int, Tensor] = {}

        def keep(i: int):
            def hook(_module, _inputs, output):
                captured[i] = output  # the last call wins if a layer is reused
            return hook

        handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(self.target_layers)]
        try:
            if not images.requires_grad:
                # So activations carry a graph even when every weight is frozen.
                images = images.detach().requires_grad_(True)
            logits = model_logits(self.model(images))
        finally:
            for h in handles:
                h.remove()
        if len(captured) != len(self.target_layers):
            missing = [i for i in range(len(self.target_layers)) if i not in captured]
            raise RuntimeError(f"target layers {missing} were not called in the forward pass")
        acts = [captured[i] for i in range(len(self.target_layers))]
        # Images are independent in eval mode, so one backward of the summed scores gives
        # each image the gradient of its own score.
        score = logits.gather(1, idx[:, None]).sum()
        grads = torch.autograd.grad(score, acts, create_graph=create_graph, retain_graph=create_graph)

        size = tuple(images.shape[-2:])
        per_layer = []
        for act, grad in zip(acts, grads):
            if self.reshape_transform is not None:
                act, grad = self.reshape_transform(act), self.reshape_transform(grad)
            if act.ndim != 4:
                raise ValueError(f"target layer output has shape {tuple(act.shape)}; "
                                 "token outputs need reshape_transform=vit_reshape_transform()")
            if not create_graph:
                act, grad = act.detach(), grad.detach()
            per_layer.append(upsample(normalise_maps(cam_from_gradients(act, grad)), size))
        return torch.stack(per_layer).mean(dim=0)


__all__ = ["GradCAM", "cam_from_gradients", "vit_reshape_transform"]
