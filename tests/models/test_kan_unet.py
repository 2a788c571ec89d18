"""The KAN U-Net family: registry, shapes for any size, training, timm encoders (fast: tiny nets, small inputs)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.layers import BASES, KANConv2d
from kan_zoo.models import kan_unet
from kan_zoo.segmentation import segmentation_loss
from model_checks import (
    assert_encoder_weights, assert_grads_finite, check_segmentation_fx, save_weights, serve_tag_weights, train_losses,
)

FULL_NAMES = [f"kan_unet_{b}" for b in BASES]
TINY_NAMES = [f"kan_unet_tiny_{b}" for b in BASES]
TINY = "kan_unet_tiny_gram"
ODD = (37, 45)

pytestmark = pytest.mark.usefixtures("one_thread")


def disks(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of a bright disk at a random place; the target is the disk's mask."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.randint(size // 4, 3 * size // 4, (n, 2, 1, 1), generator=generator)
    radius = torch.randint(size // 8, size // 4, (n, 1, 1), generator=generator)
    mask = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 <= radius**2).float()
    images = mask.unsqueeze(1).expand(-1, 3, -1, -1) + 0.3 * torch.randn(n, 3, size, size, generator=generator)
    return images, mask


def test_registry_names_and_no_weights():
    assert set(timm.list_models("kan_unet*")) == set(FULL_NAMES + TINY_NAMES)
    assert timm.list_pretrained("kan_unet*") == []
    with pytest.raises(RuntimeError, match="No pretrained weights.*encoder_pretrained=True"):
        timm.create_model(TINY, pretrained=True)


@pytest.mark.parametrize("name", FULL_NAMES)
def test_full_models_on_meta(name):
    basis = name.rsplit("_", 1)[1]
    model = timm.create_model(name, device="meta")
    widths = tuple(w // kan_unet.width_divisor(basis) for w in kan_unet.UNET_WIDTHS["unet"])
    assert model.encoder.channels == list(widths) and model.pad_multiple == 2 ** (len(widths) - 1)
    # Every 3x3 conv is a KAN conv of the model's basis; the only plain conv is the 1x1 head.
    kan = [m for m in model.modules() if isinstance(m, KANConv2d)]
    assert len(kan) == 2 * (2 * len(widths) - 1) and {m.basis.name for m in kan} == {basis}
    assert [m for m in model.modules() if isinstance(m, nn.Conv2d)] == [model.head]
    assert model.head.kernel_size == (1, 1) and model.get_classifier() is model.head
    with torch.no_grad():
        assert model(torch.empty(1, 3, *ODD, device="meta")).shape == (1, 1, *ODD)
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "license", "first_conv"):
        assert cfg.get(key) is not None, key
    assert "arXiv:1505.04597" in cfg["paper_ids"] and not cfg.get("classifier") and not cfg.get("pool_size")
    assert isinstance(model.get_submodule(cfg["first_conv"]), KANConv2d)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_forward_backward_each_basis(name):
    model = timm.create_model(name, num_classes=3).train()
    out = model(torch.randn(2, 3, *ODD))
    assert out.shape == (2, 3, *ODD) and torch.isfinite(out).all()
    segmentation_loss(out, torch.randint(0, 3, (2, *ODD))).backward()
    assert_grads_finite(model)


@pytest.mark.parametrize("size", [(1, 1), (5, 9), (16, 16), (17, 64), (33, 31)])
def test_any_size_keeps_its_shape(size):
    model = timm.create_model(TINY, in_chans=1, num_classes=2)
    assert model.pad_multiple == 4
    assert model.train()(torch.randn(2, 1, *size)).shape == (2, 2, *size)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_pads_with_zeros_at_the_bottom_right_and_crops_back():
    # model(x) is the top-left crop of the model's output on x explicitly zero-padded to the stride.
    model = timm.create_model(TINY).eval()
    x = torch.randn(1, 3, 15, 18)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :15, :18], rtol=0, atol=0)
        assert torch.equal(model(padded), model.forward_head(model.forward_features(padded)))


def test_training_reduces_the_loss():
    gen = torch.Generator().manual_seed(0)
    images, masks = disks(8, 32, gen)
    model = timm.create_model(TINY).train()
    losses = train_losses(model, lambda: segmentation_loss(model(images), masks), steps=25)
    assert sum(losses[-3:]) / 3 < 0.75 * losses[0], losses


ENCODERS = ["kan_test_resnet_gram", "kan_test_vgg_gram", "kan_test_densenet_gram"]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_classification_backbone_as_encoder(encoder):
    model = timm.create_model(TINY, encoder=encoder, num_classes=2, in_chans=1).train()
    info = timm.create_model(encoder, features_only=True, device="meta").feature_info
    reductions = info.reduction()
    assert model.pad_multiple == reductions[-1]
    # One decoder level per skip, plus skip-less x2 levels from the first map's stride to 1.
    assert len(model.decoder) == len(reductions) - 1 + reductions[0].bit_length() - 1
    out = model(torch.randn(2, 1, *ODD))
    assert out.shape == (2, 2, *ODD) and torch.isfinite(out).all()
    out.mean().backward()
    assert_grads_finite(model)


def test_encoder_pretrained_weights_through_the_pretrained_tag(tmp_path, monkeypatch):
    # The real timm path: the .in1k tag's Hugging Face repo, served from a local offline cache.
    tag = "kan_vgg11_bottleneck_gram.in1k"
    state = serve_tag_weights(tag, monkeypatch, tmp_path / "hf")
    model = timm.create_model(TINY, encoder=tag, encoder_pretrained=True)
    loaded = model.encoder.state_dict()
    assert_encoder_weights(loaded, state)
    fresh = timm.create_model(TINY, encoder=tag)
    assert not torch.equal(fresh.encoder.features_0.weight, loaded["features_0.weight"])


def test_encoder_pretrained_weights_from_a_file(tmp_path):
    source = timm.create_model("kan_test_resnet_gram")
    path = save_weights(source, tmp_path / "encoder.safetensors")
    model = timm.create_model(
        TINY, encoder="kan_test_resnet_gram", encoder_pretrained=True,
        encoder_kwargs=dict(pretrained_cfg_overlay=dict(file=path)),
    )
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


@pytest.mark.parametrize("encoder", [None, "kan_test_resnet_gram"])
def test_grad_checkpointing_gives_the_same_gradients(encoder):
    model = timm.create_model(TINY, encoder=encoder).train()
    x = torch.randn(2, 3, 20, 28)

    def grads():
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    plain_out, plain = grads()
    model.set_grad_checkpointing(True)
    ckpt_out, ckpt = grads()
    torch.testing.assert_close(ckpt_out, plain_out)
    for a, b in zip(ckpt, plain):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("encoder", [None, "kan_test_resnet_gram"])
def test_fx_trace_and_feature_extraction(encoder):
    # Traced once, the graph serves any size: the padding and the crop are computed from the input.
    model = timm.create_model("kan_unet_tiny_bspline", encoder=encoder, num_classes=2)
    encoder_stage = "encoder.stages.1" if encoder is None else "encoder.layer2"
    check_segmentation_fx(model, [ODD, (16, 24)], [encoder_stage, "decoder.0", "decoder.1", "head"])


def test_device_dtype_and_head_reset():
    model = timm.create_model(TINY, dtype=torch.float64, num_classes=2)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    model.reset_classifier(5)
    assert model.head.weight.dtype == torch.float64 and model.num_classes == 5
    assert model(torch.randn(2, 3, 9, 9, dtype=torch.float64)).shape == (2, 5, 9, 9)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 9, 9, dtype=torch.float64)).shape == (2, model.num_features, 9, 9)
    meta = timm.create_model("kan_unet_gram", device="meta", encoder="kan_resnet18_gram")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    features = timm.create_model(TINY, num_classes=0)
    assert features(torch.randn(2, 3, 8, 8)).shape == (2, features.num_features, 8, 8)


def test_clear_errors():
    model = timm.create_model(TINY)
    with pytest.raises(ValueError, match=r"4-D input"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match=r"in_chans=3.*1 channels"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"multiple of 4.*batch of >= 2"):
        model.train()(torch.randn(1, 3, 4, 4))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 4, 4)).shape == (1, 1, 4, 4)  # eval BatchNorm is fine
    instance = timm.create_model(TINY, norm_layer="instance").eval()
    with pytest.raises(ValueError, match=r"too few for its InstanceNorm; use an input larger than 4x4"):
        instance(torch.randn(2, 3, 3, 4))
    with torch.no_grad():
        assert instance(torch.randn(1, 3, 3, 5)).shape == (1, 1, 3, 5)
    with pytest.raises(ValueError, match=r"reductions \[2, 8\]"):
        timm.create_model(TINY, encoder="kan_test_resnet_gram", encoder_kwargs=dict(out_indices=(0, 2)))
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model(TINY, encoder="kan_no_such_net")
    with pytest.raises(ValueError, match="decoder_channels needs 2"):
        timm.create_model(TINY, decoder_channels=(8,))
    with pytest.raises(ValueError, match="no global pool"):
        model.reset_classifier(2, "avg")


def test_own_segmentation_weights_load_through_timm(tmp_path):
    # No published weights, but a trained model's file loads on the usual timm path.
    trained = timm.create_model(TINY, in_chans=1)
    path = save_weights(trained, tmp_path / "unet.safetensors")
    loaded = timm.create_model(TINY, in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
