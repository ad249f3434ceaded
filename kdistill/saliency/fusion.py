"""Dual-evidence fusion: gradient evidence (Grad-CAM) x intervention evidence (occlusion).

After "Toward Faithful Segmentation Attribution via Benchmarking and Dual-Evidence Fusion"
(arXiv 2603.22624), which fuses the two so that emphasis grows where both agree and causal
support is kept when the gradient is unstable. Our rule, per image, on maps G, O in [0, 1]:

* ``rule="geometric"`` (default): F = sqrt(G * O); ``rule="product"``: F = G * O. Both are
  zero wherever either evidence is zero and rank pixels identically (sqrt is monotone); the
  geometric mean keeps more of the mass profile, the product is sharper. Why a product
  rather than a sum: Grad-CAM is sharp but local (a linearisation: it lights up whatever the
  last layer's gradient touches, including context the model does not need), occlusion is
  causal but coarse (window-sized blocks). Their agreement keeps Grad-CAM's resolution only
  inside regions whose removal really lowers the probability, which cuts off-target leakage
  and improves deletion faithfulness; a sum would keep each source's false positives.
* fallback, so the fusion never returns an empty map while one source still has evidence:
  if G carries no evidence (all zero after ReLU; a saturated or dead gradient), F = O; if O
  carries none (no window lowers the probability), F = G; if both carry evidence but in
  disjoint places (F all zero), F = O: the intervention is the causal one, so it wins.
  "No evidence" means a normalised map whose max is below 0.5 (normalised maps peak at 1
  unless they are flat).

The rule applied to each image of the last call is kept in ``last_fallback``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdistill.saliency.base import BaseAttribution, finding_indices, model_device, normalise_maps

_HAS_EVIDENCE = 0.5


def fuse_maps(gradient: Tensor, intervention: Tensor, rule: str = "geometric") -> tuple[Tensor, list[str]]:
    """Fuse (B, H, W) maps in [0, 1]; returns the normalised fused maps and the rule used per image."""
    if gradient.shape != intervention.shape:
        raise ValueError(f"evidence maps differ in shape: {tuple(gradient.shape)} vs {tuple(intervention.shape)}")
    if rule == "geometric":
        fused = torch.sqrt(gradient.clamp_min(0) * intervention.clamp_min(0))
    elif rule == "product":
        fused = gradient.clamp_min(0) * intervention.clamp_min(0)
    else:
        raise ValueError(f"rule must be 'geometric' or 'product', got {rule!r}")
    fused = normalise_maps(fused)
    used = []
    for b in range(fused.shape[0]):
        g_ok = bool(gradient[b].max() >= _HAS_EVIDENCE)
        o_ok = bool(intervention[b].max() >= _HAS_EVIDENCE)
        if not g_ok and o_ok:
            fused[b], tag = intervention[b], "intervention_only"
        elif g_ok and not o_ok:
            fused[b], tag = gradient[b], "gradient_only"
        elif g_ok and o_ok and fused[b].max() < _HAS_EVIDENCE:
            fused[b], tag = intervention[b], "disjoint_intervention"
        else:
            tag = rule if (g_ok and o_ok) else "no_evidence"
        used.append(tag)
    return fused, used


class FusedAttribution(BaseAttribution):
    """Fuse a gradient method and an intervention method (both ``BaseAttribution``s on one model).

    Typical use: ``FusedAttribution(GradCAM(model, "features.4"), OcclusionAttribution(model))``.
    """

    def __init__(self, gradient: BaseAttribution, intervention: BaseAttribution, rule: str = "geometric"):
        if gradient.model is not intervention.model:
            raise ValueError("gradient and intervention evidence must explain the same model")
        super().__init__(gradient.model)
        if rule not in ("geometric", "product"):
            raise ValueError(f"rule must be 'geometric' or 'product', got {rule!r}")
        self.gradient, self.intervention, self.rule = gradient, intervention, rule
        self.last_fallback: list[str] = []

    @classmethod
    def from_model(cls, model, target_layers, reshape_transform=None, window: int = 8, stride: int = 4,
                   baseline: float | str = 0.0, rule: str = "geometric") -> "FusedAttribution":
        """Grad-CAM at ``target_layers`` fused with sliding-window occlusion, in one call."""
        from kdistill.saliency.gradcam import GradCAM
        from kdistill.saliency.occlusion import OcclusionAttribution
        return cls(GradCAM(model, target_layers, reshape_transform),
                   OcclusionAttribution(model, window=window, stride=stride, baseline=baseline), rule)

    def attribute(self, images: Tensor, finding: int | Tensor) -> Tensor:
        idx = finding_indices(finding, images.shape[0], model_device(self.model))
        g = self.gradient.attribute(images, idx)
        o = self.intervention.attribute(images, idx)
        fused, self.last_fallback = fuse_maps(g, o, self.rule)
        return fused


__all__ = ["FusedAttribution", "fuse_maps"]
