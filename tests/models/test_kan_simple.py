"""kan_simple4/8: every variant built and trained a step, the plain twins, MNIST/CIFAR shapes, timm contract."""
import pytest
import timm
import torch
from torch import nn

import kan_zoo  # noqa: F401
from kan_zoo.layers import BASES, KANConv2d
from kan_zoo.models.kan_simple import PLAIN

NAMES = [f"kan_{arch}_{basis}" for arch in ("simple4", "simple8") for basis in (PLAIN, *BASES)]


def test_every_variant_is_registered():
    assert set(timm.list_models("kan_simple*")) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    model = timm.create_model(name)
    assert (model.in_chans, model.num_classes) == (1, 10)  # MNIST defaults
    x = torch.randn(2, 1, 16, 16)  # small, to keep the 40 M-parameter variants quick
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch,depth", [("simple4", 4), ("simple8", 8)])
def test_layers_and_twins(arch, depth):
    with torch.device("meta"):
        kan = timm.create_model(f"kan_{arch}_gram")
        plain = timm.create_model(f"kan_{arch}_{PLAIN}")
    kan_convs = [m for m in kan.modules() if isinstance(m, KANConv2d)]
    plain_convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(kan_convs) == len(plain_convs) == depth
    assert not any(isinstance(m, KANConv2d) for m in plain.modules())
    assert [m.out_channels for m in kan_convs] == [m.out_channels for m in plain_convs]
    assert all(m.kernel_size == (3, 3) for m in kan_convs + plain_convs)
    assert [m.stride for m in kan_convs] == [m.stride for m in plain_convs]
    # Dropout 0.25 before every conv but the first, 0.5 before the classifier.
    assert [m.p for m in kan.stages.modules() if isinstance(m, nn.Dropout)] == [0.25] * (depth - 1)
    assert kan.head.drop.p == 0.5
    n_kan, n_plain = (sum(p.numel() for p in m.parameters()) for m in (kan, plain))
    assert n_kan > 3 * n_plain  # 5 functions (degree 3 + base) per edge vs 1


def test_widths_and_cifar():
    model = timm.create_model("kan_simple8_chebyshev", in_chans=3, num_classes=100)
    widths = [m.out_channels for m in model.modules() if isinstance(m, KANConv2d)]
    assert widths == [16, 32, 64, 128, 256, 256, 512, 512]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with torch.device("meta"):
        s4 = timm.create_model("kan_simple4_bspline", in_chans=3, num_classes=10)
    assert [m.out_channels for m in s4.modules() if isinstance(m, KANConv2d)] == [32, 64, 128, 256]


def test_timm_contract():
    model = timm.create_model("kan_simple4_relu").eval()
    x = torch.randn(2, 1, 28, 28)
    feats = model.forward_features(x)
    assert feats.shape == (2, 256, 7, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
    final, inter = model.forward_intermediates(x)
    assert [t.shape[1:] for t in inter] == [(32, 28, 28), (64, 14, 14), (256, 7, 7)]
    torch.testing.assert_close(final, feats)
    assert model.feature_info[-1]["reduction"] == 4
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 256)
    features = timm.create_model("kan_simple4_conv", features_only=True, out_indices=(1, 2))
    assert [t.shape[1] for t in features(x)] == [64, 256]
    pruned = timm.create_model("kan_simple8_conv")
    assert pruned.prune_intermediate_layers(indices=(1,)) == [1]
    assert pruned(torch.randn(2, 1, 16, 16)).shape == (2, 32, 8, 8)
    assert timm.create_model("kan_simple4_gram").pretrained_cfg["input_size"] == (1, 28, 28)
