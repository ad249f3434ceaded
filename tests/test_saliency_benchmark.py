"""Saliency benchmark against known answers: hand-computed 4x4 cases, chance levels of flat and
random maps, a model that only reads a known region, and methods that ignore the model."""
import numpy as np
import pytest
import torch
from torch import nn

from eval.saliency import SaliencyBenchConfig, aggregate_over_findings, deletion_insertion, dice_iou, \
    energy_pointing_game, leakage, masks_from_roi_bits, perturbation_robustness, pointing_game, \
    randomisation_check, saliency_benchmark, scalar_metrics, spearman_maps, ssim_maps, threshold_maps
from kdistill.saliency import GradCAM, attribution_method

torch.set_num_threads(1)
SIZE = 32


# ----------------------------------------------------------------------------- hand-computed 4x4

MAP = np.array([[0, 0, 0, 0],
                [0, 4, 2, 0],
                [0, 2, 1, 0],
                [1, 0, 0, 0]], dtype=float)[None]  # total mass 10
MASK = np.zeros((1, 4, 4), bool)
MASK[0, 1:3, 1:3] = True  # holds 4 + 2 + 2 + 1 = 9
OTHER = np.zeros((1, 4, 4), bool)
OTHER[0, 3, 0:2] = True  # holds 1 + 0
OTHER[0, 1, 1] = True  # overlaps the target: not counted as another finding's region


def test_hand_computed_energy_leakage_dice_iou():
    assert energy_pointing_game(MAP, MASK)[0] == pytest.approx(0.9)
    leak = leakage(MAP, MASK, OTHER)
    assert leak["outside"][0] == pytest.approx(0.1)
    assert leak["other"][0] == pytest.approx(0.1)
    # top-4 (region area) pixels: 4, 2, 2 inside the region, then a tie at 1 between (2, 2)
    # inside and (3, 0) outside, broken at random. Fixed threshold instead: map >= 0.5 * max = 2
    dice, iou = dice_iou(MAP, MASK, threshold=0.5)
    assert dice[0] == pytest.approx(2 * 3 / (3 + 4)) and iou[0] == pytest.approx(3 / 4)
    dice, iou = dice_iou(MAP, MASK, threshold=0.1)  # >= 0.4: five pixels, four inside
    assert dice[0] == pytest.approx(2 * 4 / (5 + 4)) and iou[0] == pytest.approx(4 / 5)
    hits = {round(float(dice_iou(MAP, MASK, "match", seed=s)[0][0]), 9) for s in range(20)}
    assert hits == {1.0, 0.75}  # the tie goes either way and both occur
    assert threshold_maps(MAP, MASK, "match").sum() == 4


def test_hand_computed_pointing_with_ties_and_tolerance():
    assert pointing_game(MAP, MASK)[0] == 1.0
    off = np.zeros((1, 4, 4))
    off[0, 0, 3] = 1.0  # top-right corner: nearest region pixel (1, 2) is sqrt(2) px away
    assert pointing_game(off, MASK)[0] == 0.0
    assert pointing_game(off, MASK, tolerance=1.4)[0] == 0.0
    assert pointing_game(off, MASK, tolerance=1.5)[0] == 1.0
    far = np.zeros((1, 4, 4))
    far[0, 3, 3] = 1.0  # bottom-right: nearest region pixel (2, 2) is sqrt(2) px away
    assert pointing_game(far, MASK, tolerance=1.0)[0] == 0.0
    tie = np.zeros((1, 4, 4))
    tie[0, 1, 1] = tie[0, 0, 0] = tie[0, 3, 3] = 1.0  # three maxima, one inside
    assert pointing_game(tie, MASK)[0] == pytest.approx(1 / 3)


def test_true_mask_as_map_scores_perfectly_and_empty_masks_are_nan():
    rng = np.random.default_rng(0)
    masks = np.zeros((5, 16, 16), bool)
    for b in range(4):
        y, x = rng.integers(0, 10, 2)
        masks[b, y:y + 5, x:x + 4] = True
    maps = masks.astype(float)
    assert np.allclose(pointing_game(maps, masks)[:4], 1)
    assert np.allclose(energy_pointing_game(maps, masks)[:4], 1)
    dice, iou = dice_iou(maps, masks)
    assert np.allclose(dice[:4], 1) and np.allclose(iou[:4], 1)
    assert np.isnan(pointing_game(maps, masks)[4]) and np.isnan(dice[4])  # image 4 has no region


def test_flat_and_random_maps_score_chance():
    masks = np.zeros((1, 16, 16), bool)
    masks[0, 4:12, 2:10] = True  # share 64 / 256 = 0.25
    flat = np.full((1, 16, 16), 0.3)
    assert energy_pointing_game(flat, masks)[0] == pytest.approx(0.25)
    assert pointing_game(flat, masks)[0] == pytest.approx(0.25)
    assert energy_pointing_game(np.zeros_like(flat), masks)[0] == pytest.approx(0.25)  # no mass = flat

    rng = np.random.default_rng(1)
    n = 2000
    maps = rng.random((n, 16, 16))
    many = np.repeat(masks, n, axis=0)
    assert pointing_game(maps, many).mean() == pytest.approx(0.25, abs=0.03)
    assert energy_pointing_game(maps, many).mean() == pytest.approx(0.25, abs=0.01)
    dice, _ = dice_iou(maps, many)
    assert dice.mean() == pytest.approx(0.25, abs=0.01)  # top-k of random = random k pixels


def test_masks_from_roi_bits():
    bits = np.zeros((1, 2, 2), np.uint16)
    bits[0, 0, 0] = (1 << 3) | (1 << 5)
    bits[0, 1, 1] = 1 << 13
    target, other = masks_from_roi_bits(bits, 3)
    assert target[0].tolist() == [[True, False], [False, False]]
    assert other[0].tolist() == [[True, False], [False, True]]


# ----------------------------------------------------------------------------- similarity

def test_ssim_and_spearman_known_answers():
    rng = np.random.default_rng(0)
    a = rng.random((3, 12, 12))
    assert np.allclose(ssim_maps(a, a), 1.0) and np.allclose(spearman_maps(a, a), 1.0)
    assert np.allclose(spearman_maps(a, -a), -1.0)
    b = rng.random((3, 12, 12))
    assert np.all(ssim_maps(a, b) < 0.5)
    # 3x3 images with a 3x3 window: one window, the whole image: SSIM is the global formula
    x, y = rng.random((1, 3, 3)), rng.random((1, 3, 3))
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    cxy = ((x - mx) * (y - my)).sum() / 8
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert ssim_maps(x, y, win_size=3)[0] == pytest.approx(expected, rel=1e-9)
    flat = np.zeros((1, 4, 4))
    assert spearman_maps(flat, flat)[0] == 1.0 and spearman_maps(flat, a[:1, :4, :4])[0] == 0.0


# ----------------------------------------------------------------------------- models

class _RegionReader(nn.Module):
    """Finding 0: p = sigmoid(k * mean intensity inside a fixed box - b). Reads nothing else."""

    def __init__(self, box=(8, 16, 8, 24), k: float = 12.0, b: float = 6.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(k))
        region = torch.zeros(SIZE, SIZE)
        y0, y1, x0, x1 = box
        region[y0:y1, x0:x1] = 1
        self.register_buffer("region", region)
        self.b = b

    def forward(self, x):
        inside = (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        logits = torch.zeros(len(x), 14)
        logits[:, 0] = self.scale * inside - self.b
        return logits


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 14))


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _region_batch(n: int = 4):
    """Images bright (1.0) in the box the model reads, random dim (<= 0.5) elsewhere."""
    model = _RegionReader()
    images = _images(n) * 0.5
    images[:, :, 8:16, 8:24] = 1.0
    masks = np.zeros((n, SIZE, SIZE), bool)
    masks[:, 8:16, 8:24] = True
    return model, images, masks


def _edge_detector(model, images, finding):
    """Ignores the model entirely: gradient magnitude of the image."""
    x = images[:, 0].detach().cpu().numpy()
    gy, gx = np.gradient(x, axis=(1, 2))
    return np.hypot(gx, gy)


def _intensity(model, images, finding):
    """Ignores the model: the image itself (exactly shift-equivariant)."""
    return images[:, 0].detach().cpu().numpy().astype(float)


# ----------------------------------------------------------------------------- faithfulness

def test_deletion_in_true_region_order_hits_the_floor_and_beats_random():
    model, images, masks = _region_batch()
    steps = 16  # the box is 128 px = 1/8 of the image: gone after exactly 2 of 16 steps
    out = deletion_insertion(model, images, masks.astype(float), 0, steps=steps, baseline=0.0, random_orders=2)
    p0 = 1 / (1 + np.exp(-(12.0 - 6.0)))
    floor = 1 / (1 + np.exp(6.0))
    curve = out["deletion_curve"]
    assert np.allclose(curve[:, 0], p0, atol=1e-6) and np.allclose(curve[:, 2:], floor, atol=1e-6)
    # the best possible order: area = floor + the two first trapezoids above it
    best = floor + (curve[:, 0] + 2 * curve[:, 1] + curve[:, 2] - 4 * floor) / (2 * steps)
    assert np.allclose(out["deletion_auc"], best)
    assert np.all(out["deletion_auc"] <= floor + 2 / steps * (p0 - floor) + 1e-9)
    assert np.all(out["deletion_auc_random"] > out["deletion_auc"] + 0.3)
    assert np.all(out["deletion_gap"] > 0.3)
    # insertion in true-region order reaches p0 after 2 steps: far above random
    assert np.allclose(out["insertion_curve"][:, 2:], p0, atol=1e-6)
    assert np.all(out["insertion_gap"] > 0.3)


def test_anti_faithful_order_scores_worse_than_random():
    model, images, masks = _region_batch()
    out = deletion_insertion(model, images, (~masks).astype(float), 0, steps=16, random_orders=2)
    assert np.all(out["deletion_gap"] < -0.2) and np.all(out["insertion_gap"] < -0.2)


# ----------------------------------------------------------------------------- robustness, sanity

def test_robustness_of_a_shift_equivariant_method_is_perfect_under_shift():
    model, images, _ = _region_batch(2)
    out = perturbation_robustness(model, images, 0, _intensity, noise_sigma=0.0, shift_px=3)
    for key in ("noise_spearman", "noise_ssim", "shift_spearman", "shift_ssim"):
        assert np.allclose(out[key], 1.0), key
    noisy = perturbation_robustness(model, images, 0, _intensity, noise_sigma=0.2, shift_px=0)
    assert np.all(noisy["noise_spearman"] < 0.99) and np.all(noisy["noise_ssim"] < 0.99)
    assert "shift_spearman" not in noisy


def test_randomisation_check_fails_a_method_that_ignores_the_model():
    model, images = _cnn(), _images(3)
    out = randomisation_check(model, images, 2, _edge_detector)
    assert np.allclose(out["spearman"], 1.0) and np.allclose(out["ssim"], 1.0)


def test_randomisation_check_passes_gradcam_and_leaves_the_model_alone():
    model, images = _cnn(), _images(3)
    before = [p.detach().clone() for p in model.parameters()]
    method = attribution_method(GradCAM, target_layers="3")
    out = randomisation_check(model, images, 2, method, mode="cascading", seed=1)
    assert np.mean(np.abs(out["spearman"])) < 0.5
    names = [name for name, _ in out["by_layer"]]
    assert names == ["10", "6", "3", "0"]  # output side first
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    flat = saliency_benchmark(model, images, np.ones((3, SIZE, SIZE), bool), 2, method,
                              config=SaliencyBenchConfig(randomisation="cascading", seed=1, faithfulness=False,
                                                         robustness=False))
    assert flat["randomisation_spearman_after/00_10"] == pytest.approx(out["by_layer"][0][1])
    assert flat["randomisation_spearman"] == pytest.approx(np.mean(out["spearman"]))


# ----------------------------------------------------------------------------- end to end

def test_saliency_benchmark_end_to_end_and_aggregation():
    model, images, masks = _region_batch(3)
    other = np.zeros_like(masks)
    other[:, 20:28, 4:12] = True
    masks[2] = False  # one image without a region for this finding
    cfg = SaliencyBenchConfig(steps=8, random_orders=1, shift_px=2)
    result = saliency_benchmark(model, images, masks, 0, _edge_detector, other_masks=other, config=cfg)
    assert result["n_samples"] == 3 and result["n_scored"] == 2
    for key in ("pointing_game", "energy_pointing_game", "dice", "iou", "leakage_outside", "leakage_other",
                "deletion_auc", "deletion_auc_random", "deletion_gap", "insertion_auc", "insertion_gap",
                "noise_spearman", "noise_ssim", "shift_spearman", "shift_ssim", "randomisation_spearman",
                "randomisation_pass", "chance_energy", "chance_pointing"):
        assert isinstance(result[key], float) and np.isfinite(result[key]), key
        assert result[f"{key}_per_sample"].shape == (3,)
    assert result["randomisation_pass"] == 0.0  # the edge detector ignores the model
    assert result["chance_energy"] == pytest.approx(128 / 1024)

    perfect = saliency_benchmark(model, images, masks, 0, _intensity, other_masks=other, maps=masks.astype(float),
                                 config=SaliencyBenchConfig(steps=8, random_orders=1, sanity=False,
                                                            robustness=False))
    assert perfect["energy_pointing_game"] == 1.0 and perfect["dice"] == 1.0 and perfect["leakage_outside"] == 0.0
    assert np.isnan(perfect["leakage_other_per_sample"][2]) and perfect["leakage_other"] == 0.0
    assert "noise_ssim" not in perfect and "randomisation_spearman" not in perfect

    combined = aggregate_over_findings({"Edema": result, "Cardiomegaly": perfect})
    assert combined["Cardiomegaly/dice"] == 1.0
    assert combined["mean/dice"] == pytest.approx((result["dice"] + 1.0) / 2)
    assert combined["mean/noise_ssim"] == result["noise_ssim"]  # only one finding has it
    assert combined["total/n_samples"] == 6 and combined["n_findings"] == 2
    assert all(isinstance(v, float) for v in scalar_metrics(result).values())


def test_config_loads_from_a_dict_and_rejects_bad_values():
    from kdistill.config import ConfigError, from_dict

    cfg = from_dict(SaliencyBenchConfig, {"threshold": 0.3, "baseline": "blur", "randomisation": "cascading"})
    assert cfg.threshold == 0.3 and cfg.baseline == "blur"
    with pytest.raises(ConfigError, match="threshold"):
        from_dict(SaliencyBenchConfig, {"threshold": 1.5})
    with pytest.raises(ConfigError, match="randomisation"):
        from_dict(SaliencyBenchConfig, {"randomisation": "some"})


def test_bad_inputs_and_config_are_named():
    model, images, masks = _region_batch(2)
    with pytest.raises(ValueError, match="shape"):
        saliency_benchmark(model, images, masks[:, :16], 0, _intensity)
    with pytest.raises(ValueError, match="threshold"):
        saliency_benchmark(model, images, masks, 0, _intensity, config=SaliencyBenchConfig(threshold="otsu"))
    with pytest.raises(ValueError, match="NaN"):
        energy_pointing_game(np.full((1, 4, 4), np.nan), MASK)
