"""The KAN U2-Net family and the deep-supervision loss (fast: the tiny net at 32-45 px, full sizes on meta)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.layers import BASES, KANConv2d
from kan_zoo.models import kan_u2net
from kan_zoo.models.kan_u2net import KANRSU
from kan_zoo.segmentation import deep_supervision_loss, segmentation_loss
from model_checks import assert_encoder_weights, assert_grads_finite, check_segmentation_fx, save_weights, train_losses

FULL_NAMES = [f"kan_u2net_{b}" for b in BASES]
SMALL_NAMES = [f"kan_u2net_small_{b}" for b in BASES]
TINY_NAMES = [f"kan_u2net_tiny_{b}" for b in BASES]
TINY = "kan_u2net_tiny_gram"
ODD = (37, 45)
NUM_OUTPUTS = 7  # fused + six side maps

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_names_and_no_weights():
    assert set(timm.list_models("kan_u2net*")) == set(FULL_NAMES + SMALL_NAMES + TINY_NAMES)
    assert timm.list_pretrained("kan_u2net*") == []
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model(TINY, pretrained=True)


@pytest.mark.parametrize("basis", BASES)
def test_full_and_small_models_on_meta(basis):
    full = timm.create_model(f"kan_u2net_{basis}", device="meta")
    small = timm.create_model(f"kan_u2net_small_{basis}", device="meta")
    div = kan_u2net.width_divisor(basis)
    for model, arch in ((full, "u2net"), (small, "u2net_small")):
        outs = [stage.conv_in.out_channels for stage in [*model.encoder.stages, *model.decoder]]
        assert outs == [o // div for o in kan_u2net.U2NET_WIDTHS[arch][1]]
        # RSU-7, 6, 5, 4, 4F, 4F then 4F, 4, 5, 6, 7: L encoder levels + L - 1 decoder levels each.
        assert [len(s.encoder) for s in model.encoder.stages] == [7, 6, 5, 4, 4, 4]
        assert [len(s.decoder) for s in model.decoder] == [3, 3, 4, 5, 6]
        kan = [m for m in model.modules() if isinstance(m, KANConv2d)]
        assert {m.basis.name for m in kan} == {basis}
        plain = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(plain) == 7 and all(m in list(model.get_classifier().modules()) for m in plain)
        cfg = model.pretrained_cfg
        assert "arXiv:2005.09007" in cfg["paper_ids"] and not cfg.get("classifier") and not cfg.get("pool_size")
        assert isinstance(model.get_submodule(cfg["first_conv"]), KANConv2d)
    n_full, n_small = (sum(p.numel() for p in m.parameters()) for m in (full, small))
    assert n_small < n_full / 10
    with torch.no_grad():
        assert small.eval()(torch.empty(1, 3, *ODD, device="meta")).shape == (1, 1, *ODD)


def test_rsu_block_shapes_and_dilations():
    args = dict(basis="gram", norm_layer="batch")
    block = KANRSU(5, 3, 4, 6, args)
    assert [c.dilation for c in block.encoder] == [(1, 1)] * 4 + [(2, 2)]
    dilated = KANRSU(4, 3, 4, 6, args, dilated=True)
    assert [c.dilation[0] for c in dilated.encoder] == [1, 2, 4, 8]
    assert [c.dilation[0] for c in dilated.decoder] == [4, 2, 1]
    x = torch.randn(2, 3, 16, 24)
    assert block(x).shape == dilated(x).shape == (2, 6, 16, 24)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_train_outputs_and_backward_each_basis(name):
    model = timm.create_model(name, num_classes=2).train()
    outputs = model(torch.randn(2, 3, *ODD))
    assert isinstance(outputs, tuple) and len(outputs) == NUM_OUTPUTS
    for out in outputs:
        assert out.shape == (2, 2, *ODD) and torch.isfinite(out).all()
    deep_supervision_loss(outputs, torch.randint(0, 2, (2, *ODD))).backward()
    assert_grads_finite(model)


def test_eval_returns_the_fused_map():
    model = timm.create_model(TINY, num_classes=3).eval()
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        fused = model(x)
        everything = model.forward_all(x)
    assert isinstance(fused, torch.Tensor) and fused.shape == (1, 3, *ODD)
    assert len(everything) == NUM_OUTPUTS and torch.equal(everything[0], fused)


@pytest.mark.parametrize("size", [(1, 1), (31, 33), (64, 40)])
def test_any_size_keeps_its_shape(size):
    model = timm.create_model(TINY, in_chans=1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, *size)).shape == (1, 1, *size)
    assert all(o.shape == (2, 1, *size) for o in model.train()(torch.randn(2, 1, *size)))


def test_deep_supervised_training_reduces_the_loss():
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    centre = torch.randint(8, 24, (6, 2, 1, 1), generator=gen)
    masks = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 <= 36).float()
    images = masks.unsqueeze(1).expand(-1, 3, -1, -1) + 0.3 * torch.randn(6, 3, 32, 32, generator=gen)
    model = timm.create_model(TINY).train()
    losses = train_losses(model, lambda: deep_supervision_loss(model(images), masks), steps=12)
    assert losses[-1] < 0.5 * losses[0], losses


def test_deep_supervision_loss_helper():
    logits = [torch.randn(2, 1, 5, 6) for _ in range(3)]
    mask = torch.rand(2, 5, 6) > 0.5
    total = deep_supervision_loss(logits, mask)
    expected = sum(F.binary_cross_entropy_with_logits(m, mask.unsqueeze(1).float()) for m in logits)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(deep_supervision_loss(logits, mask.unsqueeze(1)), expected)
    weighted = deep_supervision_loss(logits, mask, weights=[1.0, 0.0, 2.0])
    torch.testing.assert_close(weighted, segmentation_loss(logits[0], mask) + 2 * segmentation_loss(logits[2], mask))
    # K classes: cross-entropy over (N, H, W) indices; a single tensor is one output.
    multi, labels = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    torch.testing.assert_close(deep_supervision_loss(multi, labels), F.cross_entropy(multi, labels))
    dice = lambda out, target: 1 - (out.sigmoid() * target).sum() / target.sum()  # noqa: E731
    torch.testing.assert_close(deep_supervision_loss(logits[:1], mask.unsqueeze(1).float(), loss_fn=dice),
                               dice(logits[0], mask.unsqueeze(1).float()))
    with pytest.raises(ValueError, match="2 weights for 3 outputs"):
        deep_supervision_loss(logits, mask, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"4-class target must be \(N, H, W\)"):
        segmentation_loss(multi, labels.unsqueeze(1))
    with pytest.raises(ValueError, match="binary target"):
        segmentation_loss(logits[0], mask[:, :4])


@pytest.mark.parametrize("encoder", [None, "kan_test_resnet_gram"])
def test_grad_checkpointing_gives_the_same_gradients(encoder):
    model = timm.create_model(TINY, encoder=encoder).train()
    x = torch.randn(2, 3, 32, 32)

    def grads():
        model.zero_grad()
        deep_supervision_loss(model(x), (x[:, 0] > 0).float()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    for a, b in zip(grads(), plain):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("encoder, num_classes", [(None, 1), ("kan_test_vgg_gram", 2), (None, 0)])
def test_fx_trace_and_feature_extraction(encoder, num_classes):
    # Train mode traces the tuple of seven maps, eval mode the fused map, num_classes=0 the features.
    model = timm.create_model("kan_u2net_tiny_relu", encoder=encoder, num_classes=num_classes)
    modules = ["encoder.stages.2" if encoder is None else "encoder.features_2", "decoder.0", "decoder.1"]
    check_segmentation_fx(model, [ODD, (20, 9)], modules + (["head.sides.0", "head.fuse"] if num_classes else []))


def test_device_dtype_heads_and_errors():
    model = timm.create_model(TINY, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    model.reset_classifier(4)
    assert {p.dtype for p in model.get_classifier().parameters()} == {torch.float64}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 8, 8, dtype=torch.float64)).shape == (1, 4, 8, 8)
        model.reset_classifier(0)
        assert model(torch.randn(1, 3, 8, 8, dtype=torch.float64)).shape == (1, model.num_features, 8, 8)
    assert {p.device.type for p in timm.create_model("kan_u2net_gram", device="meta").parameters()} == {"meta"}
    features = timm.create_model(TINY, num_classes=0, encoder="kan_test_resnet_gram").eval()
    with torch.no_grad():  # the finest decoder stage is at stride 2 here: upsampled to the input size
        assert features(torch.randn(1, 3, 9, 11)).shape == (1, features.num_features, 9, 11)

    model = timm.create_model(TINY)
    with pytest.raises(ValueError, match="4-D input"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"in_chans=3.*4 channels"):
        model(torch.randn(2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"multiple of 32.*batch of >= 2"):
        model.train()(torch.randn(1, 3, 32, 32))
    assert len(model.train()(torch.randn(1, 3, 33, 32))) == NUM_OUTPUTS  # two 32-px tiles: fine
    with pytest.raises(ValueError, match="no global pool"):
        model.reset_classifier(1, "avg")
    with pytest.raises(ValueError, match="need 11 widths"):
        timm.create_model(TINY, mid_channels=(2,) * 10)


@pytest.mark.parametrize("encoder", ["kan_test_resnet_gram", "kan_test_vgg_gram", "kan_test_densenet_gram"])
def test_classification_backbone_as_encoder(encoder):
    model = timm.create_model(TINY, encoder=encoder, num_classes=2, in_chans=1).train()
    reductions = timm.create_model(encoder, features_only=True, device="meta").feature_info.reduction()
    # One RSU decoder stage per skip, shaped for its stride; a side output per stage plus the deepest map.
    assert [(len(s.encoder), s.pooled) for s in model.decoder] == [
        (kan_u2net.rsu_shape(r)[0], not kan_u2net.rsu_shape(r)[1]) for r in reductions[-2::-1]
    ]
    outputs = model(torch.randn(2, 1, *ODD))
    assert len(outputs) == 1 + len(reductions) and all(o.shape == (2, 2, *ODD) for o in outputs)
    deep_supervision_loss(outputs, torch.randint(0, 2, (2, *ODD))).backward()
    assert_grads_finite(model)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, *ODD)).shape == (1, 2, *ODD)


def test_encoder_pretrained_weights_from_a_file(tmp_path):
    source = timm.create_model("kan_test_densenet_gram")
    model = timm.create_model(
        TINY, encoder="kan_test_densenet_gram", encoder_pretrained=True,
        encoder_kwargs=dict(pretrained_cfg_overlay=dict(file=save_weights(source, tmp_path / "encoder.safetensors"))),
    )
    assert_encoder_weights(model.encoder.state_dict(), source.state_dict())
