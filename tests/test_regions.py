"""The region decoder and the soft Dice primitive against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdistill.saliency.regions import finding_mask, finding_masks, region_masks
from student.losses import soft_dice_loss


def _bits():
    bits = np.zeros((2, 4, 4), np.uint16)
    bits[0, :2, :2] |= 1 << 3          # finding 3: the top-left quarter of study 0
    bits[0, 0, 0] |= 1 << 13           # finding 13: one pixel of study 0
    return bits


def test_bits_decode_to_per_finding_masks_of_any_integer_dtype():
    for dtype in (np.uint16, np.int64):
        m = finding_masks(_bits().astype(dtype))
        assert m.shape == (2, 14, 4, 4) and m.dtype == torch.bool
        assert m[0, 3].sum() == 4 and m[0, 13].sum() == 1 and m[1].sum() == 0 and m[0, 0].sum() == 0
    assert finding_mask(_bits(), 3)[0].sum() == 4 and not finding_mask(_bits(), 3)[1].any()


def test_region_masks_at_a_coarser_grid_are_area_shares():
    masks, has = region_masks(_bits(), (2, 2))
    assert has[0].nonzero().flatten().tolist() == [3, 13] and not has[1].any()
    assert masks[0, 3].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert masks[0, 13].tolist() == [[0.25, 0.0], [0.0, 0.0]]  # one pixel of a 2x2 cell


def test_soft_dice_against_a_hand_computed_value():
    maps = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]], requires_grad=True)  # (1, 1, 2, 2)
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    loss = soft_dice_loss(maps, masks, torch.tensor([[True]]), eps=0.0)
    assert loss.item() == pytest.approx(1 - 2 * 1.0 / (1.5 + 1.0))  # 0.2
    loss.backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0


def test_soft_dice_is_exactly_zero_without_regions_and_finite_on_zero_maps():
    maps = torch.zeros(2, 14, 3, 3, requires_grad=True)
    none = soft_dice_loss(maps, torch.zeros_like(maps), torch.zeros(2, 14, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    valid = torch.zeros(2, 14, dtype=torch.bool)
    valid[0, 1] = True
    masks = torch.zeros(2, 14, 3, 3)
    masks[0, 1, 1, 1] = 1
    zero_map = soft_dice_loss(maps, masks, valid)
    zero_map.backward()
    assert zero_map.item() == pytest.approx(1.0, abs=1e-5) and torch.isfinite(maps.grad).all()


def test_gcam_dice_uses_gradcams_map_and_trains_the_tower():
    from kdistill.saliency import GradCAM
    from kdistill.saliency.base import normalise_maps
    from student.losses import gcam_dice_loss

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    head = torch.nn.Linear(4, 14)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = conv, head

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    net = Net()
    images = torch.rand(3, 1, 6, 6)
    masks = torch.zeros(3, 14, 6, 6)
    masks[:, 2, :3, :3] = 1
    valid = torch.zeros(3, 14, dtype=torch.bool)
    valid[:2, 2] = True
    feats = torch.relu(net.conv(images))
    logits = net.head(feats.mean((2, 3)))
    loss = gcam_dice_loss(feats, logits, masks, valid)
    # The same value from the library's Grad-CAM maps (hooked on the ReLU'd conv output, no upsampling).
    relu = torch.nn.ReLU()

    class Hooked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.head = conv, relu, head

        def forward(self, x):
            return self.head(self.relu(self.conv(x)).mean((2, 3)))

    cams = GradCAM(Hooked(), "relu").attribute(images[:2], 2, create_graph=True)
    want = soft_dice_loss(normalise_maps(cams)[:, None], masks[:2, 2:3], torch.ones(2, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0  # reaches the tower
    none = gcam_dice_loss(feats.detach().requires_grad_(), logits, masks, torch.zeros_like(valid))
    assert none.item() == 0.0
