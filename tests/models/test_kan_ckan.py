"""kan_ckan / kan_ckan_multiscale / kan_test_ckan: layout, every variant built and run, timm contract."""
import pytest
import timm
import torch
from torch import nn

import kan_zoo  # noqa: F401
from kan_zoo.layers import BASES, KANActivation
from kan_zoo.models.kan_ckan import CKANBlock, MultiScaleBlock

NAMES = [f"kan_{arch}_{basis}" for arch in ("ckan", "ckan_multiscale", "test_ckan") for basis in BASES]


def test_every_variant_is_registered():
    assert set(timm.list_models("kan_ckan*") + timm.list_models("kan_test_ckan*")) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    model = timm.create_model(name, num_classes=7)
    out = model(torch.randn(2, 3, 16, 16))  # 1x1 after the last pool: the smallest input
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_layout():
    with torch.device("meta"):
        model = timm.create_model("kan_ckan_bspline")
    blocks = [m for m in model.stages.modules() if isinstance(m, CKANBlock)]
    assert [b.conv.kernel_size[0] for b in blocks] == [7, 5, 3, 3, 3, 3]
    assert [b.conv.out_channels for b in blocks] == [64, 128, 256, 256, 512, 512]
    assert [b.conv.stride[0] for b in blocks] == [2, 1, 1, 1, 1, 1]
    assert all(b.conv.bias is None and isinstance(b.act, KANActivation) and isinstance(b.norm, nn.BatchNorm2d)
               for b in blocks)
    assert all(b.act.basis.name == "bspline" for b in blocks)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert isinstance(model.head.act, KANActivation) and model.head.drop.p > 0
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16]

    with torch.device("meta"):
        multi = timm.create_model("kan_ckan_multiscale_gram")
    stem = multi.stages[0][0]
    assert isinstance(stem, MultiScaleBlock)
    assert [b.conv.kernel_size[0] for b in stem.branches] == [3, 5, 7]
    assert stem.fuse.conv.kernel_size == (1, 1) and stem.fuse.conv.in_channels == 3 * 64
    assert all(b.act.basis.name == "gram" for b in multi.modules() if isinstance(b, CKANBlock))


def test_timm_contract():
    model = timm.create_model("kan_test_ckan_rbf").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 32, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    inter = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape[1:] for t in inter] == [(16, 4, 4), (32, 2, 2)]
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    features = timm.create_model("kan_test_ckan_relu", features_only=True)
    assert [t.shape[-1] for t in features(x)] == [16, 8, 4, 2]
    kept = model.prune_intermediate_layers(indices=(1,))
    assert kept == [1] and model(x).shape == (2, 16, 8, 8)
    one_channel = timm.create_model("kan_test_ckan_wavelet", in_chans=1)
    assert one_channel(torch.randn(2, 1, 32, 32)).shape == (2, 1000)
