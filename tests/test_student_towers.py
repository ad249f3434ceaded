"""Each vision-tower family of the student (student.towers): forward on the recorded grid, Grad-CAM
on the tower's feature map against the grad-cam package, grayscale input, local weights, and the
checkpoint round trip (save_weights + student.load)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import student
from kdistill import config as cfglib
from kdistill.saliency import GradCAM
from student import StudentConfig, create_student
from student.checkpoint import save_weights
from student.synthetic import TINY_MODEL, make_prepared, make_tokenizer

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SIZE = 32
# One tiny config per family; each gives a 4x4 map grid at 32² (stride 8).
FAMILIES = {
    "vit": ({}, "vit", 32),
    "modified_resnet": ({"vision_model": "kdistill-rn-small", "feature_stride": 8,
                         "vision_overrides": {"image_size": SIZE, "width": 16, "layers": [1, 1, 1, 1]}},
                        "modified_resnet", 128),
    "timm_resnet18": ({"vision_model": "kdistill-resnet18", "feature_stride": 8, "vision_overrides": {"image_size": SIZE}},
                      "timm", 128),
    "timm_resnet18_merged": ({"vision_model": "kdistill-resnet18", "feature_stride": 8, "feature_merge": True,
                              "vision_overrides": {"image_size": SIZE}}, "timm", 128),
    "timm_convnext": ({"vision_model": "kdistill-convnext-atto", "feature_stride": 8,
                       "vision_overrides": {"image_size": SIZE}}, "timm", 80),
    "timm_densenet121": ({"vision_model": "kdistill-densenet121", "feature_stride": 8,
                          "vision_overrides": {"image_size": SIZE}}, "timm", 512),
}
# The module each CNN tower's feature map comes out of (Grad-CAM hooked there must agree).
STAGE_MODULES = {"modified_resnet": "visual.model.layer2", "timm_resnet18": "visual.model.trunk.layer2",
                 "timm_convnext": "visual.model.trunk.stages.1",
                 "timm_densenet121": "visual.model.trunk.features.denseblock2"}


@pytest.fixture(scope="module")
def tok():
    torch.set_num_threads(1)
    return make_tokenizer(make_prepared(16, 8, size=SIZE))


def _cfg(family: str, **kw) -> StudentConfig:
    return cfglib.from_dict(StudentConfig, {**TINY_MODEL, **FAMILIES[family][0], **kw})


def _model(family: str, tok, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_student(_cfg(family, **kw), tok)


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class _Logits(nn.Module):
    """The student as pytorch-grad-cam wants a model: images -> logits tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["logits"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_gives_maps_on_the_recorded_grid(family, tok):
    model = _model(family, tok)
    _, expected_family, width = FAMILIES[family]
    assert model.visual.family == expected_family and model.visual.width == width
    assert model.grid == (4, 4) and model.cfg.map_grid == [4, 4]
    out = model(_images())
    assert out["logits"].shape == (3, 14) and out["maps"].shape == (3, 14, 4, 4)
    assert torch.allclose(out["maps"].sum(dim=(2, 3)), torch.ones(3, 14), atol=1e-5)  # attention over the grid
    assert model.visual(_images()).shape == (3, 16, width)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradcam_on_the_tower_feature_map_equals_grad_cam_package(family, tok):
    model = _model(family, tok).eval()
    x = _images(3)
    layers, reshape = model.gradcam_target()
    assert layers == [model.visual.feature_map]
    informative = 0
    for finding in (0, 5, 9):
        ours = GradCAM.from_model(model)(x, finding)
        ref = pytorch_grad_cam.GradCAM(_Logits(model), layers, reshape_transform=reshape)(
            x, [ClassifierOutputTarget(finding)] * len(x))
        assert ours.shape == (3, SIZE, SIZE)
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        informative += int((ours.std(axis=(1, 2)) > 0.05).all())
        if family in STAGE_MODULES:  # the feature map is the chosen stage's output itself
            np.testing.assert_allclose(GradCAM(model, STAGE_MODULES[family])(x, finding), ours, atol=1e-5)
    assert informative >= 2  # not a comparison of blank maps


@pytest.mark.parametrize("family", list(FAMILIES))
def test_checkpoint_round_trip_records_the_grid(family, tok, tmp_path):
    model = _model(family, tok, seed=3, decoder_pool=2).eval()
    save_weights(model.cfg, model.state_dict(), tmp_path)
    tok.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["map_grid"] == [4, 4] and saved["vocab_size"] == len(tok)
    loaded = student.load(tmp_path)
    x = _images(2, seed=1)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5) and torch.allclose(a["maps"], b["maps"], atol=1e-6)
    assert loaded.decoder_tokens(loaded.encode_image(x)).shape[1] == 4  # the decoder reads the map pooled 2x2
    saved["map_grid"] = [8, 8]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="grid"):
        student.load(tmp_path)


@pytest.mark.parametrize("family", ["modified_resnet", "timm_resnet18", "timm_convnext", "timm_densenet121"])
def test_cnn_grayscale_sum_conv_equals_repeating_the_channel(family, tok):
    rep = _model(family, tok, grayscale="repeat").eval()
    summed = _model(family, tok, grayscale="sum_conv").eval()
    name = f"visual.model.{rep.visual.first_conv_name()}.weight"
    state = rep.state_dict()
    assert state[name].shape[1] == 3
    state[name] = state[name].sum(dim=1, keepdim=True)
    summed.load_state_dict(state)
    x = _images(2)
    with torch.no_grad():
        assert torch.allclose(rep.encode_image(x), summed.encode_image(x), atol=1e-4)


def test_timm_tower_loads_a_local_timm_checkpoint_and_prunes_later_stages(tok, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    reference = timm.create_model("resnet18", pretrained=False)  # with its classifier, as timm ships it
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    model = _model("timm_resnet18", tok, vision_pretrained=str(tmp_path / "resnet18.safetensors"))
    trunk = model.visual.model.trunk
    assert torch.equal(trunk.layer2[1].conv2.weight, reference.layer2[1].conv2.weight)
    assert torch.equal(trunk.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert not any(k.startswith(("visual.model.trunk.layer3", "visual.model.trunk.layer4", "visual.model.trunk.fc"))
                   for k in model.state_dict())  # stages after the chosen one are gone
    wrong = {k: v for k, v in reference.state_dict().items() if not k.startswith("layer1")}
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        _model("timm_resnet18", tok, vision_pretrained=str(tmp_path / "partial.safetensors"))


def test_feature_merge_adds_the_deeper_stages_upsampled_to_the_chosen_grid(tok):
    import torch.nn.functional as F

    model = _model("timm_resnet18_merged", tok).eval()
    trunk, lateral = model.visual.model.trunk, model.visual.lateral
    assert len(lateral) == 2 and any(k.startswith("visual.model.trunk.layer4") for k in model.state_dict())
    x = (_images(2) - 0.5) / 0.25
    with torch.no_grad():
        fine, mid, deep = trunk.forward_intermediates(x, indices=[2, 3, 4], intermediates_only=True)
        up = lambda t: F.interpolate(t, size=fine.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        expected = fine + up(lateral[0](mid)) + up(lateral[1](deep))
        got = model.visual(x) - model.visual.pos_embed
    assert torch.allclose(got, expected.flatten(2).transpose(1, 2), atol=1e-5)


def test_feature_stride_picks_the_stage_and_refuses_one_the_tower_lacks(tok):
    assert _model("timm_resnet18", tok, feature_stride=16).grid == (2, 2)
    assert _model("timm_resnet18", tok, feature_stride=None).grid == (1, 1)  # the last stage, stride 32
    assert _model("timm_resnet18", tok, feature_stride=4).grid == (8, 8)
    with pytest.raises(ValueError, match="strides"):
        _model("timm_resnet18", tok, feature_stride=12)
    with pytest.raises(ValueError, match="patches"):
        _model("vit", tok, feature_stride=4)
    with pytest.raises(ValueError, match="decoder_pool"):
        _model("vit", tok, decoder_pool=3)
