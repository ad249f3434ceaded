"""The student's objective, one small function per term, summed with weights.

L = w_cls * masked BCE                          (findings; mask from the uncertain-label policy)
  + w_rep * caption CE on the report
  + w_kd  * caption CE on the teacher's rationale  (sequence-level KD)
  + w_emb * feature KD: (1 - cos) + InfoNCE between the student's pooled multimodal embedding
            (projected to the teacher's size) and the teacher's rationale embedding
  + w_tok * token-level KD: KL from the teacher's cached top-k next-token distribution to the
            student's, at every rationale position (needs a cache generated with topk > 0)
  + w_ha  * H-EGL's alignment L_HA: penalised Dice of each labelled-positive finding's class map
            vs its expert region (``halign_loss``)
  + w_dal * H-EGL's discriminative attention L_DAL: mean pairwise cosine of an image's class maps
            (``dal_loss``)
  + w_gcam_dice * EGxFSL's Grad-CAM Dice vs the expert region (``gcam_dice_loss``)
Another term joins by adding its name to ``LossWeights`` and its value to the dict ``combine`` sums.

The region terms (ha, gcam_dice) use the batch's ``region_masks`` (B, 14, h, w) at the map grid and
``has_region`` (B, 14) (``student.data.StudyDataset.attach_regions``); a (study, finding) pair counts
when it has a region and the finding is labelled positive (target 1, label kept); a region of a finding
labelled otherwise is ignored (the dataset counts those). ``egl_pair_counts`` gives how many pairs
(images for dal) each term averages over, so the training loop can make a multi-process run average
over the pairs of the whole global batch (``student.train``), exactly as one process would.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from student.text import IGNORE_INDEX


@dataclasses.dataclass
class LossWeights:
    cls: float = 1.0
    rep: float = 1.0
    kd: float = 1.0
    emb: float = 0.2  # 0.5 with the image-side (prompt) embedding stalled the tower on one validation seed
    tok: float = 0.0  # token-level KD; the demo cache stores no top-k (conclusion_first reorders the text)
    temperature: float = 0.1  # InfoNCE temperature of the feature-KD term
    tok_temperature: float = 1.0  # softening of both distributions in the token-level KD term
    ha: float = 0.0  # H-EGL L_HA (needs expert regions in the prepared cache)
    dal: float = 0.0  # H-EGL L_DAL
    gcam_dice: float = 0.0  # EGxFSL Grad-CAM Dice (needs expert regions)
    ha_penalty: float = 1.0  # lambda of L_HA: weight of the map's mass outside the region
    dal_classes: Literal["all", "positives"] = "all"  # L_DAL over all 14 maps or the positives only
    gcam_findings: int = 0  # Grad-CAM Dice: backwards per step on K sampled findings (unbiased); 0 = all

    def validate(self) -> None:
        for name in ("cls", "rep", "kd", "emb", "tok", "ha", "dal", "gcam_dice", "ha_penalty"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"loss weight {name} must be >= 0, got {value}")
        if self.temperature <= 0 or self.tok_temperature <= 0:
            raise ValueError("temperature and tok_temperature must be positive")
        if not (isinstance(self.gcam_findings, int) and self.gcam_findings >= 0):
            raise ValueError(f"gcam_findings must be an int >= 0 (0: every finding), got {self.gcam_findings!r}")
        if self.dal_classes not in ("all", "positives"):
            raise ValueError(f"dal_classes must be 'all' or 'positives', got {self.dal_classes!r}")

    def terms(self) -> dict[str, float]:
        return {"cls": self.cls, "rep": self.rep, "kd": self.kd, "emb": self.emb, "tok": self.tok,
                "ha": self.ha, "dal": self.dal, "gcam_dice": self.gcam_dice}

    @property
    def needs_regions(self) -> bool:
        """Whether the batch must carry region masks (L_HA, Grad-CAM Dice)."""
        return self.ha > 0 or self.gcam_dice > 0


def classification_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the entries the label policy keeps (mask 1)."""
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return (per_entry * mask).sum() / mask.sum().clamp_min(1.0)


def caption_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of next-token logits (B, L-1, V) against labels (B, L) shifted by one."""
    targets = labels[:, 1:]
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # keeps the graph (DDP) when no row of the batch has this text
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine similarity) between paired embeddings."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE: row i of the student should pick row i of the teacher and back."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    logits = s @ t.T / temperature
    target = torch.arange(s.shape[0], device=s.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def feature_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Align the student's pooled embedding with the teacher's: (1 - cos) + InfoNCE."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    return embedding_cosine(student, teacher) + info_nce(student, teacher, temperature)


def topk_kl(logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Token-level KD to a cached top-k teacher: at each position with ``mask``, KL(p || q) over
    the teacher's k tokens, p the teacher's top-k log-probs renormalised (softmax of
    ``topk_logprobs / T``) and q the student's full-vocabulary softmax of ``logits / T``; the mean
    over positions, times T² (so gradients keep their size across T, as in Hinton et al.).
    Shapes: logits (B, L, V), topk_* (B, L, k), mask (B, L). With k = V it is the exact KL."""
    if not bool(mask.any()):
        return logits.sum() * 0.0
    t = float(temperature)
    student_logq = torch.log_softmax(logits[mask].float() / t, dim=-1)  # (N, V)
    ids = topk_ids[mask]
    inside = ids < student_logq.shape[-1]  # a teacher id past the student's vocabulary weighs 0
    teacher = (topk_logprobs[mask].float() / t).masked_fill(~inside, float("-inf"))
    p, logp = torch.softmax(teacher, dim=-1), torch.log_softmax(teacher, dim=-1)
    logq = student_logq.gather(-1, ids.clamp(max=student_logq.shape[-1] - 1))
    per_pos = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
    return per_pos.mean() * t * t


def soft_dice_loss(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean soft Dice loss 1 - (2 sum(m r) + eps) / (sum(m) + sum(r) + eps) over the (study, finding)
    pairs with ``valid`` set; maps (B, K, h, w) in [0, 1], masks (B, K, h, w) in [0, 1] (soft region
    masks, ``kdistill.saliency.regions.region_masks``), valid (B, K) bool. Exactly 0, with the graph
    kept (DDP), when no pair is valid; an all-zero map gives loss 1 and a finite gradient."""
    if not bool(valid.any()):
        return maps.sum() * 0.0
    m, r = maps[valid].flatten(1).float(), masks[valid].flatten(1).float()
    dice = (2 * (m * r).sum(-1) + eps) / (m.sum(-1) + r.sum(-1) + eps)
    return (1 - dice).mean()


def gcam_dice_loss(features: torch.Tensor, logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                   reshape=None, findings: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """EGxFSL's Grad-CAM Dice loss: for each (study, finding) pair with ``valid`` set, the
    differentiable Grad-CAM of that finding's logit on ``features`` against its region, by
    ``soft_dice_loss``, averaged over the pairs.

    ``features``: the tensor ``logits`` (B, K) were computed from (a tower's feature map, NCHW, or
    its tokens with ``reshape`` turning them, and their gradient, into (B, C, h, w)); masks (B, K, h, w)
    at that grid. One backward per finding that has a pair in the batch, with ``create_graph=True``
    so the loss trains the tower. The map is ``kdistill.saliency.GradCAM``'s (ReLU of
    gradient-weighted activations, min-max normalised per image) at the feature grid, before any
    upsampling. Exactly 0 (graph kept) when no pair is valid.

    ``findings`` = K > 0 with F > K findings present: the backwards run on K of them drawn uniformly
    without replacement (``torch.randperm``, ``generator``), and the estimate is
    (F / K) * sum_{j drawn} n_j D_j / P, with D_j the finding's mean Dice loss over its n_j pairs and
    P = sum_j n_j over all F: each finding is drawn with probability K / F, so its expectation is
    the full loss sum_j n_j D_j / P, at K instead of F create_graph backwards."""
    from kdistill.saliency.base import normalise_maps
    from kdistill.saliency.gradcam import cam_from_gradients

    if not bool(valid.any()):
        return logits.sum() * 0.0
    present = valid.any(0).nonzero().flatten()
    pairs, scale = int(valid.sum()), 1.0
    if 0 < findings < len(present):
        scale = len(present) / findings
        present = present[torch.randperm(len(present), generator=generator)[:findings].to(present.device)]
    total = logits.new_zeros(())
    for j in present.tolist():
        rows = valid[:, j]
        (grad,) = torch.autograd.grad(logits[:, j].sum(), features, create_graph=True)
        act = features if reshape is None else reshape(features)
        grad = grad if reshape is None else reshape(grad)
        cam = normalise_maps(cam_from_gradients(act[rows].float(), grad[rows].float()))
        n = int(rows.sum())
        total = total + soft_dice_loss(cam[:, None], masks[rows, j][:, None],
                                       torch.ones(n, 1, dtype=torch.bool, device=cam.device)) * n
    return total * scale / pairs


def halign_loss(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, penalty: float = 1.0,
                eps: float = 1e-6) -> torch.Tensor:
    """H-EGL's human-AI alignment loss L_HA (arXiv 2510.12704): a penalised Dice loss between each
    valid (study, finding) pair's class map and its expert region, averaged over the valid pairs.

    For a map m >= 0 (B, K, h, w; the class-query attention, any scale) and soft region r in [0, 1]
    at the same grid (``kdistill.saliency.regions.region_masks``)::

        m^ = (m - min m) / (max m - min m + 1e-7)                        (per map; normalise_maps)
        L_HA(b, k) = 1 - (2 sum(m^ r) + eps) / (sum(m^) + sum(r) + eps)      (soft Dice on m^)
                     + penalty * sum(m (1 - r)) / (sum(m) + eps)           (mass outside the region)

    The paper describes L_HA as a Dice loss with a penalty on attribution outside the expert box;
    its exact penalty form could not be read, so this one (the share of the raw map's mass outside
    the region, weighted by ``penalty``) is ours. A map equal to its region scores 0 (Dice 1, no
    mass outside). Exactly 0 with the graph kept (DDP) when no pair is valid; an all-zero map gives
    1 + 0 and a finite gradient."""
    from kdistill.saliency.base import normalise_maps

    if not bool(valid.any()):
        return maps.sum() * 0.0
    b, k, h, w = maps.shape
    m = maps.float().clamp_min(0.0)
    mhat = normalise_maps(m.reshape(b * k, h, w)).reshape(b, k, h, w)
    dice = soft_dice_loss(mhat, masks, valid, eps)
    if not penalty:
        return dice
    mv, rv = m[valid].flatten(1), masks[valid].flatten(1).float()
    outside = (mv * (1.0 - rv)).sum(-1) / (mv.sum(-1) + eps)
    return dice + penalty * outside.mean()


def dal_loss(maps: torch.Tensor, classes: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """H-EGL's discriminative attention loss L_DAL (arXiv 2510.12704): the mean pairwise cosine
    similarity between the class maps of one image, averaged over images.

    Each map (B, K, h, w) is flattened and L2-normalised (a zero map stays zero), G = M M^T the
    (K, K) Gram matrix of one image, and with ``classes`` (B, K) bool the maps taken (None: all K)
    and n = their number, L_DAL(b) = (sum_{i != j in classes} G_ij) / (n (n - 1)), all pairs at
    once (no loop over pairs). Images with n < 2 are left out; exactly 0 (graph kept) when none is
    left. Maps are non-negative, so L_DAL is in [0, 1]: 0 when the maps look at disjoint places."""
    b, k = maps.shape[:2]
    flat = maps.float().flatten(2)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(eps)
    sel = torch.ones(b, k, dtype=unit.dtype, device=unit.device) if classes is None else classes.to(unit.dtype)
    n = sel.sum(-1)
    keep = n >= 2
    if not bool(keep.any()):
        return maps.sum() * 0.0
    gram = unit @ unit.transpose(1, 2)  # (B, K, K)
    off = torch.einsum("bi,bij,bj->b", sel, gram, sel) - (sel * torch.diagonal(gram, dim1=1, dim2=2)).sum(-1)
    per_image = off[keep] / (n[keep] * (n[keep] - 1))
    return per_image.mean()


def positive_pairs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 14) bool: the finding is labelled positive (target 1 with its label kept)."""
    return (batch["targets"] == 1) & (batch["target_mask"] > 0)


def region_pairs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 14) bool: the (study, finding) pairs the region terms train on (positive with a region)."""
    if "has_region" not in batch:
        return torch.zeros_like(batch["targets"], dtype=torch.bool)
    return batch["has_region"].to(batch["targets"].device) & positive_pairs(batch)


def dal_classes_of(batch: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor | None:
    return positive_pairs(batch) if weights.dal_classes == "positives" else None


def egl_pair_counts(batch: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, float]:
    """How many (study, finding) pairs (L_DAL: images) each EGL term with weight > 0 averages over
    in this batch; from the batch alone (no forward needed)."""
    counts: dict[str, float] = {}
    if weights.ha or weights.gcam_dice:
        n = float(region_pairs(batch).sum())
        if weights.ha:
            counts["ha"] = n
        if weights.gcam_dice:
            counts["gcam_dice"] = n
    if weights.dal:
        if weights.dal_classes == "positives":
            counts["dal"] = float((positive_pairs(batch).sum(-1) >= 2).sum())
        else:
            counts["dal"] = float(len(batch["targets"]))
    return counts


def combine(values: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of the terms present; a term with weight 0 is left out of the graph."""
    total = None
    for name, value in values.items():
        w = weights.get(name, 0.0)
        if w:
            total = value * w if total is None else total + value * w
    if total is None:
        raise ValueError("every loss weight is 0: nothing to train")
    return total


def student_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossWeights,
                 scales: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All terms for one batch (those with weight > 0), and their weighted sum. ``scales``: a factor
    per term applied in the sum only (the training loop's global-batch normalisation of the EGL
    terms under several processes); the returned terms are unscaled."""
    w = weights.terms()
    values: dict[str, torch.Tensor] = {}
    if w["cls"]:
        values["cls"] = classification_bce(out["logits"], batch["targets"], batch["target_mask"])
    if w["rep"]:
        values["rep"] = caption_ce(out["report_logits"], batch["report_labels"])
    if w["kd"]:
        values["kd"] = caption_ce(out["rationale_logits"], batch["rationale_labels"])
    if w["emb"]:
        # A split whose studies have no cached rationale carries no teacher embeddings at all.
        has = batch["has_rationale"] if "teacher_embedding" in batch else torch.zeros(len(out["embedding"]), dtype=torch.bool)
        teacher = batch.get("teacher_embedding", out["embedding"])
        values["emb"] = feature_kd(out["embedding"][has], teacher[has], weights.temperature)
    if w["tok"]:
        if "rationale_topk_ids" not in batch:  # no row of this batch has the teacher's top-k
            values["tok"] = out["rationale_logits"].sum() * 0.0
        else:  # logits[:, i] predict ids[:, i + 1]: the top-k of label position i + 1
            values["tok"] = topk_kl(out["rationale_logits"], batch["rationale_topk_ids"][:, 1:],
                                    batch["rationale_topk_logprobs"][:, 1:], batch["rationale_topk_mask"][:, 1:],
                                    weights.tok_temperature)
    if w["ha"] or w["gcam_dice"]:
        if "region_masks" not in batch:
            raise ValueError("loss.ha / loss.gcam_dice > 0 need the batch's region_masks (StudyDataset.attach_regions)")
        valid = region_pairs(batch)
        masks = batch["region_masks"]
        if w["ha"]:
            values["ha"] = halign_loss(out["maps"], masks, valid, weights.ha_penalty)
        if w["gcam_dice"]:
            if "cam_features" not in out:
                raise ValueError("loss.gcam_dice > 0 needs the model's features (forward with_features=True)")
            if torch.is_grad_enabled():
                cam = out["cam_features"]
                values["gcam_dice"] = gcam_dice_loss(cam.features, out["logits"], masks, valid, cam.reshape,
                                                     findings=weights.gcam_findings)
            else:  # validation: Grad-CAM needs gradients; the term is left out of the loss there
                values["gcam_dice"] = out["logits"].sum() * 0.0
    if w["dal"]:
        values["dal"] = dal_loss(out["maps"], dal_classes_of(batch, weights))
    if scales:
        scaled = {k: v * scales[k] if k in scales else v for k, v in values.items()}
        return combine(scaled, w), values
    return combine(values, w), values
