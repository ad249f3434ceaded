"""Training-time augmentation: label-preserving jitter, off by default, reproducible."""
import pytest
import torch

from student.augment import AugmentConfig, augment


def _dot_images(b=8, size=32):
    x = torch.zeros(b, 1, size, size)
    x[:, :, 14:18, 14:18] = 1.0
    return x


def _centre_of_mass(x):
    size = x.shape[-1]
    coords = torch.arange(size, dtype=torch.float32)
    m = x[:, 0]
    total = m.sum(dim=(1, 2))
    return (m.sum(2) * coords).sum(1) / total, (m.sum(1) * coords).sum(1) / total  # rows, cols


def test_disabled_or_zero_jitter_returns_the_images():
    x = torch.rand(4, 1, 32, 32)
    assert augment(x, AugmentConfig(enabled=False), torch.Generator().manual_seed(0)) is x
    zero = AugmentConfig(enabled=True, shift=0, scale=0, rotate=0, contrast=0, brightness=0)
    assert torch.allclose(augment(x, zero, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_shift_moves_each_image_by_at_most_the_limit_and_keeps_its_mass():
    x = _dot_images()
    cfg = AugmentConfig(enabled=True, shift=0.1, scale=0, rotate=0, contrast=0, brightness=0)
    out = augment(x, cfg, torch.Generator().manual_seed(1))
    r0, c0 = _centre_of_mass(x)
    r1, c1 = _centre_of_mass(out)
    moved = torch.maximum((r1 - r0).abs(), (c1 - c0).abs())
    assert (moved <= 0.1 * 32 + 1e-3).all() and (moved > 0.05).sum() >= 6  # moved, within the limit
    assert len({round(float(v), 3) for v in r1}) == len(r1)  # each image its own shift
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-3)  # the dot is not cut


def test_no_flip_left_stays_left():
    x = torch.zeros(16, 1, 32, 32)
    x[..., :8] = 1.0  # bright left quarter
    out = augment(x, AugmentConfig(enabled=True), torch.Generator().manual_seed(2))
    assert (out[..., :16].mean(dim=(1, 2, 3)) > out[..., 16:].mean(dim=(1, 2, 3)) + 0.3).all()


def test_same_generator_seed_same_jitter_and_range_kept():
    x = torch.rand(4, 1, 32, 32)
    cfg = AugmentConfig(enabled=True, contrast=0.5, brightness=0.3)
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    b = augment(x, cfg, torch.Generator().manual_seed(3))
    c = augment(x, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(enabled=True, scale=1.5).validate()
    with pytest.raises(ValueError, match="shift"):
        AugmentConfig(shift=-0.1).validate()
