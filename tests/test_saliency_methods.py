"""Saliency methods against known answers: the grad-cam package (pytorch-grad-cam) as reference
for Grad-CAM, models that only look at a known region for occlusion and fusion."""
import numpy as np
import pytest
import torch
from torch import nn

from kdistill.saliency import AttentionMaps, FusedAttribution, GradCAM, OcclusionAttribution, attribution_method, \
    fuse_maps, vit_reshape_transform

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

torch.set_num_threads(1)
SIZE = 32


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 14))


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _TinyViT(nn.Module):
    """4x4 patches on 32x32 -> an 8x8 grid of tokens plus a class token."""

    def __init__(self, dim: int = 16, patch: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(1, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (SIZE // patch) ** 2 + 1, dim) * 0.1)
        self.blocks = nn.Sequential(_Block(dim), _Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 14)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class _RegionModel(nn.Module):
    """Finding 0's logit = k * mean intensity of a conv feature inside a fixed box - b: the model
    only looks at the box. The conv (1x1, weight 1) gives Grad-CAM a layer to explain; Grad-CAM's
    channel weights then light up every bright pixel, inside the box or not (gradient leakage)."""

    def __init__(self, box=(8, 16, 8, 16), k: float = 10.0, b: float = 5.0):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        region = torch.zeros(1, 1, SIZE, SIZE)
        y0, y1, x0, x1 = box
        region[..., y0:y1, x0:x1] = 1
        self.register_buffer("region", region)
        self.k, self.b = k, b

    def forward(self, x):
        feat = self.conv(x)
        inside = (feat * self.region).sum(dim=(1, 2, 3)) / self.region.sum()
        logits = torch.zeros(len(x), 14, device=x.device)
        logits[:, 0] = self.k * inside - self.b
        return {"logits": logits}


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_gradcam_equals_grad_cam_package_on_a_cnn():
    model, x = _cnn(), _images()
    informative = 0
    for finding in range(5):
        ours = GradCAM(model, "6")(x, finding)
        ref = pytorch_grad_cam.GradCAM(model, [model[6]])(x, [ClassifierOutputTarget(finding)] * len(x))
        assert ours.shape == (4, SIZE, SIZE) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        informative += int((ours.std(axis=(1, 2)) > 0.05).all())
    assert informative >= 2  # the comparison is not between two all-zero maps


def test_gradcam_multi_layer_and_per_image_findings_equal_grad_cam_package():
    model, x = _cnn(), _images()
    findings = [2, 4, 5, 7]
    ours = GradCAM(model, [model[3], "6"])(x, torch.tensor(findings))
    ref = pytorch_grad_cam.GradCAM(model, [model[3], model[6]])(x, [ClassifierOutputTarget(f) for f in findings])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert (ours.std(axis=(1, 2)) > 0.05).all()


def test_gradcam_on_vit_tokens_equals_grad_cam_package():
    model, x = _TinyViT(), _images(3)
    reshape = vit_reshape_transform(num_prefix_tokens=1)
    for finding in (0, 3):
        ours = GradCAM(model, "blocks.1.norm1", reshape_transform=reshape)(x, finding)
        ref = pytorch_grad_cam.GradCAM(model, [model.blocks[1].norm1], reshape_transform=reshape)(
            x, [ClassifierOutputTarget(finding)] * 3)
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        assert (ours.std(axis=(1, 2)) > 0.05).all()


def test_vit_reshape_transform_drops_prefix_tokens_and_lays_out_rows():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # 1 prefix + a 2x3 grid
    grid = vit_reshape_transform(1, grid=(2, 3))(tokens)
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[0, :, 1, 0], tokens[0, 1 + 3])  # row 1, column 0 = patch token 3
    assert torch.equal(vit_reshape_transform(1, (2, 3), batch_first=False)(tokens.transpose(0, 1)), grid)
    with pytest.raises(ValueError, match="square"):
        vit_reshape_transform(1)(tokens)
    with pytest.raises(ValueError, match="does not hold"):
        vit_reshape_transform(1, grid=(2, 2))(tokens)


def test_gradcam_leaves_no_hooks_restores_train_mode_and_reads_dict_outputs():
    model = _cnn()
    model.train()
    wrapped = nn.Module()
    wrapped.net = model
    wrapped.forward = lambda x: {"logits": model(x)}
    maps = GradCAM(wrapped, "net.6")(_images(), 2)
    assert model.training and all(m.training for m in model.modules())
    assert not model[6]._forward_hooks
    np.testing.assert_allclose(maps, GradCAM(model, "6")(_images(), 2), atol=1e-6)


def test_gradcam_differentiable_path_matches_and_backpropagates():
    model, x = _cnn(), _images()
    model.eval()
    cam = GradCAM(model, "3")
    maps = cam.attribute(x, 2, create_graph=True)
    assert maps.requires_grad
    np.testing.assert_allclose(maps.detach().numpy(), cam(x, 2), atol=1e-5)
    maps.mean().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_attention_maps_select_the_finding_channel_and_upsample():
    class Student(nn.Module):
        def forward(self, x):
            maps = torch.zeros(len(x), 14, 8, 8)
            maps[:, 1, 1, 1] = 1.0  # finding 1 attends top-left
            maps[:, 5, 6, 6] = 1.0  # finding 5 attends bottom-right
            return {"logits": torch.zeros(len(x), 14), "maps": maps}

    method = AttentionMaps(Student())
    maps = method(_images(2), torch.tensor([1, 5]))
    assert maps.shape == (2, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    peak0 = np.unravel_index(maps[0].argmax(), maps[0].shape)
    peak1 = np.unravel_index(maps[1].argmax(), maps[1].shape)
    assert 4 <= peak0[0] < 8 and 4 <= peak0[1] < 8  # cell (1, 1) of 8x8 covers pixels 4..7
    assert 24 <= peak1[0] < 28 and 24 <= peak1[1] < 28
    with pytest.raises(TypeError, match="'maps'"):
        AttentionMaps(lambda x: torch.zeros(len(x), 14))(_images(1), 0)


def test_occlusion_puts_its_mass_on_the_region_the_model_reads():
    model = _RegionModel(box=(8, 16, 8, 16))
    maps = OcclusionAttribution(model, window=4, stride=4)(_images(), 0)
    box = np.zeros((SIZE, SIZE), bool)
    box[8:16, 8:16] = True
    # non-overlapping 4x4 windows align with the box: evidence exactly inside it
    assert (maps[:, ~box] == 0).all()
    assert (maps[:, box] > 0).all()
    overlapping = OcclusionAttribution(model, window=8, stride=4)(_images(), 0)
    energy = (overlapping * box).sum(axis=(1, 2)) / overlapping.sum(axis=(1, 2))
    assert (energy > 0.4).all()  # chance (the box's share of the image) is 1/16
    assert all(box.ravel()[m.argmax()] for m in overlapping)
    reach = np.zeros((SIZE, SIZE), bool)
    reach[4:20, 4:20] = True  # windows of 8 at stride 4 that touch the box
    assert (overlapping[:, ~reach] == 0).all()


def test_fuse_maps_product_is_zero_where_either_evidence_is_zero_and_falls_back():
    g = torch.tensor([[[0.0, 0.5], [1.0, 0.2]]])
    o = torch.tensor([[[1.0, 0.0], [1.0, 0.4]]])
    for rule in ("product", "geometric"):
        fused, used = fuse_maps(g, o, rule)
        assert used == [rule]
        assert fused[0, 0, 0] == 0 and fused[0, 0, 1] == 0  # one of the two is zero there
        assert fused[0, 1, 0] == pytest.approx(1.0)  # both maximal: normalised peak
    product, _ = fuse_maps(g, o, "product")
    assert product[0, 1, 1].item() == pytest.approx(0.08, abs=1e-5)  # 0.2 * 0.4 / 1.0
    geometric, _ = fuse_maps(g, o, "geometric")
    assert geometric[0, 1, 1].item() == pytest.approx(np.sqrt(0.08), abs=1e-5)
    dead = torch.zeros_like(g)
    assert torch.equal(fuse_maps(dead, o)[0], o) and fuse_maps(dead, o)[1] == ["intervention_only"]
    assert torch.equal(fuse_maps(g, dead)[0], g) and fuse_maps(g, dead)[1] == ["gradient_only"]
    disjoint_g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    disjoint_o = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    fused, used = fuse_maps(disjoint_g, disjoint_o)
    assert used == ["disjoint_intervention"] and torch.equal(fused, disjoint_o)
    with pytest.raises(ValueError, match="rule"):
        fuse_maps(g, o, "sum")


def test_fused_attribution_removes_the_gradient_leakage_outside_the_region():
    model = _RegionModel(box=(8, 16, 8, 16))
    x = _images()
    box = np.zeros((SIZE, SIZE), bool)
    box[8:16, 8:16] = True
    gradcam = GradCAM(model, "conv")
    occlusion = OcclusionAttribution(model, window=4, stride=4)
    fused = FusedAttribution(gradcam, occlusion, rule="geometric")
    g, f = gradcam(x, 0), fused(x, 0)
    assert fused.last_fallback == ["geometric"] * len(x)

    def energy(m):
        return (m * box).sum(axis=(1, 2)) / m.sum(axis=(1, 2))

    assert (energy(g) < 0.2).all()  # Grad-CAM lights every bright pixel: the box is 1/16 of the image
    assert (f[:, ~box] == 0).all() and (energy(f) == pytest.approx(1.0))
    # within one occlusion window (flat intervention evidence) the fusion keeps Grad-CAM's pixel ranking
    for y, x0 in ((8, 8), (12, 12)):
        cell_g, cell_f = g[:, y:y + 4, x0:x0 + 4].reshape(len(x), -1), f[:, y:y + 4, x0:x0 + 4].reshape(len(x), -1)
        assert all(np.array_equal(np.argsort(a, kind="stable"), np.argsort(b, kind="stable"))
                   for a, b in zip(cell_g, cell_f))
    built = attribution_method(FusedAttribution.from_model, target_layers="conv", window=4, stride=4)
    np.testing.assert_allclose(built(model, x, 0), f, atol=1e-6)


def test_bad_inputs_are_named():
    model = _cnn()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        GradCAM(model, "6")(torch.rand(1, SIZE, SIZE), 0)
    with pytest.raises(ValueError, match="entries for a batch"):
        GradCAM(model, "6")(_images(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="reshape_transform"):
        GradCAM(_TinyViT(), "blocks.1.norm1")(_images(1), 0)
    with pytest.raises(ValueError, match="same model"):
        FusedAttribution(GradCAM(model, "6"), OcclusionAttribution(_cnn(1)))
    with pytest.raises(RuntimeError, match="not called"):
        GradCAM(model, _cnn(1)[6])(_images(1), 0)  # a layer of another model
