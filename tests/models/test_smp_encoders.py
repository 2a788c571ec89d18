"""kan_* classification backbones as segmentation_models_pytorch encoders (``tu-<name>``), offline.

smp's TimmUniversalEncoder builds ``timm.create_model(name, features_only=True, out_indices=...)`` and
reads the feature reductions: ResNet and DenseNet give strides 2..32 ("traditional" style), VGG gives
1..32 ("VGG" style, whose stride-1 map smp takes as its first feature). The tiny ``kan_test_vgg_*``
has three levels (strides 1, 2, 4), so it needs ``encoder_depth=2``; the real VGGs take the default 5.
Shallower families take the depth their pyramid has (e.g. kan_simple4: strides 1..4, depth 2;
kan_ckan: strides 2..16, depth 4); ``_depth`` reads it from the feature_info.
"""
from __future__ import annotations

import pytest
import timm
import torch

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.layers import BASES
from model_checks import assert_encoder_weights, save_weights, serve_tag_weights

smp = pytest.importorskip(
    "segmentation_models_pytorch",
    reason="segmentation_models_pytorch is not installed (pip install kan_zoo[test] brings it)",
)

# Classification backbones: registered kan_* models with a classifier (the segmentation nets have none).
CLASSIFIERS = [n for n in timm.list_models("kan_*") if timm.models.get_pretrained_cfg(n).classifier]
TINY = sorted(n for n in CLASSIFIERS if n.startswith("kan_test_"))
# Every full-size architecture once (the basis does not change the feature pyramid; the tiny ones cover it).
FULL = sorted(n for n in CLASSIFIERS if not n.startswith("kan_test_") and n.endswith("_gram"))

pytestmark = pytest.mark.usefixtures("one_thread")


def _depth(name: str) -> int:
    """The deepest smp encoder_depth a backbone supports: its levels, less the stride-1 one of VGG, plus
    the stride-2 one smp fills with an empty map where the pyramid starts at stride 4 (RDNet)."""
    with torch.device("meta"):  # not device="meta": the KAN convs would initialise on the CPU first
        reductions = timm.create_model(name, features_only=True).feature_info.reduction()
    return min(5, len(reductions) - (reductions[0] == 1) + (reductions[0] == 4))


def test_every_family_and_basis_is_covered():
    families = {n[len("kan_test_"):].rsplit("_", 1)[0] for n in TINY}
    assert {"vgg", "resnet", "densenet"} <= families
    assert {f"kan_test_{f}_{b}" for f in families for b in BASES} <= set(TINY)
    assert any("vgg" in n for n in FULL) and any("resnet" in n for n in FULL) and any("densenet" in n for n in FULL)
    # The classic families give smp its full depth of 5.
    assert all(_depth(n) == 5 for n in ("kan_vgg11_gram", "kan_resnet18_gram", "kan_densenet121_gram"))


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_unet_forward_backward(name):
    depth = _depth(name)
    model = smp.Unet(encoder_name=f"tu-{name}", encoder_weights=None, encoder_depth=depth,
                     decoder_channels=(16, 16, 8, 8, 8)[:depth], classes=2, in_channels=1).train()
    x = torch.randn(2, 1, 32, 64)
    out = model(x)
    assert out.shape == (2, 2, 32, 64) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", FULL)
def test_full_size_backbone_unet_on_meta(name):
    # Shapes only: every architecture's real pyramid at the deepest depth smp can take from it.
    depth = _depth(name)
    with torch.device("meta"):
        model = smp.Unet(encoder_name=f"tu-{name}", encoder_weights=None, encoder_depth=depth,
                         decoder_channels=(256, 128, 64, 32, 16)[:depth], classes=3)
        info = timm.create_model(name, features_only=True).feature_info
        vgg_style, from_stride_4 = info.reduction()[0] == 1, info.reduction()[0] == 4
        expected = ([] if vgg_style else [3]) + ([0] if from_stride_4 else [])  # input, empty stride-2 map
        assert model.encoder.out_channels == expected + info.channels()[: depth + vgg_style - from_stride_4]
        with torch.no_grad():
            assert model.eval()(torch.empty(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_other_smp_decoders_take_the_encoders():
    x = torch.randn(2, 3, 64, 64)
    fpn = smp.FPN(encoder_name="tu-kan_test_resnet_gram", encoder_weights=None, classes=2)
    assert fpn(x).shape == (2, 2, 64, 64)
    unetpp = smp.UnetPlusPlus(encoder_name="tu-kan_test_densenet_gram", encoder_weights=None, classes=2,
                              decoder_channels=(16, 16, 8, 8, 8))
    assert unetpp(x).shape == (2, 2, 64, 64)


def test_pretrained_tag_loads_the_encoder_weights(tmp_path, monkeypatch):
    # smp's encoder_weights=True -> timm pretrained=True on the tag, whose Hugging Face repo is served
    # from a local offline cache holding (kan_zoo-layout) weights we know.
    tag = "kan_vgg11_bottleneck_gram.in1k"
    state = serve_tag_weights(tag, monkeypatch, tmp_path / "hf")
    model = smp.Unet(encoder_name=f"tu-{tag}", encoder_weights=True, classes=2)
    assert_encoder_weights(model.encoder.model.state_dict(), state)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    out.mean().backward()


def test_pretrained_weights_from_a_file_through_smp_kwargs(tmp_path):
    # smp forwards extra Unet kwargs to timm.create_model, so any kan_* model takes a local file.
    source = timm.create_model("kan_test_resnet_gram")
    path = save_weights(source, tmp_path / "weights.safetensors")
    model = smp.Unet(encoder_name="tu-kan_test_resnet_gram", encoder_weights=True,
                     pretrained_cfg_overlay=dict(file=path), decoder_channels=(16, 16, 8, 8, 8))
    for key, value in model.encoder.model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
