"""Saliency methods: one small class per method over a shared base, after pytorch-grad-cam.

Every method maps ``(images (B, C, H, W), finding)`` to float32 maps (B, H, W) in [0, 1] at
the input size; ``finding`` is an index into ``kdistill.labels.FINDINGS`` (or one per image).

* ``GradCAM``: gradient evidence at chosen layers (CNN or ViT via ``vit_reshape_transform``);
* ``AttentionMaps``: the model's own per-finding maps (``model(images)["maps"]``);
* ``OcclusionAttribution``: intervention evidence (probability drop under sliding occlusion);
* ``FusedAttribution``: dual-evidence fusion of a gradient and an intervention method.

``saliency_method(name)`` (``kdistill.saliency.methods``): the methods by name (attention, gradcam,
fused) for the student, as ``kdistill eval`` and ``kdistill explain`` use them.

``attribution_method(cls, **kw)`` adapts a class to the benchmark's ``fn(model, images, finding)``.
"""
from kdistill.saliency.attention import AttentionMaps
from kdistill.saliency.base import BaseAttribution, attribution_method, finding_probability, model_logits, \
    normalise_maps
from kdistill.saliency.fusion import FusedAttribution, fuse_maps
from kdistill.saliency.gradcam import GradCAM, vit_reshape_transform
from kdistill.saliency.methods import METHOD_NAMES, saliency_method
from kdistill.saliency.occlusion import OcclusionAttribution
from kdistill.saliency.regions import finding_mask, finding_masks, region_masks

__all__ = ["METHOD_NAMES", "AttentionMaps", "BaseAttribution", "FusedAttribution", "GradCAM", "OcclusionAttribution",
           "attribution_method", "finding_mask", "finding_masks", "finding_probability", "fuse_maps", "model_logits", "normalise_maps",
           "region_masks", "saliency_method", "vit_reshape_transform"]
