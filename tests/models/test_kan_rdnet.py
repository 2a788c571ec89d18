"""The KAN RDNet family against timm's model contract (fast: tiny networks at 32 px or the meta device)."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import LayerNorm2d
from torch import nn

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv2d
from kan_zoo.models import kan_rdnet
from model_checks import (
    CONTRACT_CHECKS, assert_grads_finite, check_classifier_reset, check_fits_a_fixed_batch, check_forward_backward,
    check_full_model_cfg, check_grad_checkpointing, check_registry_without_weights, create, images,
)

SIZES = ("tiny", "small", "base", "large")
FULL_NAMES = [f"kan_rdnet_{s}_{b}" for s in SIZES for b in BASES]
TEST_NAMES = [f"kan_test_rdnet_{b}" for b in BASES]
TINY = "kan_test_rdnet_gram"
SIZE = 32  # the smallest input the family accepts: keeps every forward here cheap
REDUCTIONS = (4, 8, 16, 32)  # timm's RDNet taps: no stem tap, the patchify stem has stride 4

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_has_every_size_and_basis_and_no_weights():
    check_registry_without_weights("kan_*rdnet*", FULL_NAMES + TEST_NAMES, TINY)


@pytest.mark.parametrize("name", FULL_NAMES)
def test_full_models_build_on_meta(name):
    arch, basis = name[len("kan_"):].rsplit("_", 1)
    # Under the device context, not device="meta": the KAN convs would initialise on the CPU first.
    with torch.device("meta"):
        model = timm.create_model(name)
        plain = timm.create_model(arch)  # timm's rdnet of the same size
    check_full_model_cfg(model, KANConv2d, REDUCTIONS)
    # timm's topology: the same stages, taps and blocks.
    assert [(f["module"], f["reduction"]) for f in model.feature_info] == [
        (f["module"], f["reduction"]) for f in plain.feature_info
    ]
    assert [len(s.blocks) for s in model.dense_stages] == [len(s[-1]) for s in plain.dense_stages]
    # Every conv is a KAN conv of the model's basis: stem, transitions, and per block dw 7x7, two 1x1, ESE fc.
    assert not [m for m in model.modules() if type(m) is nn.Conv2d]
    kan = [m for m in model.modules() if isinstance(m, KANConv2d)]
    assert {m.basis.name for m in kan} == {basis}
    blocks = [b for s in model.dense_stages for b in s.blocks]
    ese = [b for b in blocks if isinstance(b.se, kan_rdnet.KANEffectiveSE)]
    assert len(kan) == 1 + (len(model.dense_stages) - 1) + 3 * len(blocks) + len(ese)
    assert len(ese) == sum(isinstance(m, timm.layers.EffectiveSEModule) for m in plain.modules())
    assert all(b.conv_dw.groups == b.conv_dw.in_channels and b.conv_dw.kernel_size == (7, 7) for b in blocks)
    # Widths follow the documented rule: timm's stem and growth rates / width_divisor.
    div = kan_rdnet.width_divisor(basis)
    assert model.stem.out_channels == plain.stem[0].out_channels // div
    assert [s.blocks[0].conv_project.out_channels for s in model.dense_stages] == [
        s[-1].dense_block0.growth_rate // div for s in plain.dense_stages
    ]


@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts_against_timm(size):
    # The docstring's claim: a quarter of timm's weights times the K + 1 functions of a KAN conv
    # (gram: 5 -> 1.25x, bspline: 9 -> 2.25x); the stem, transitions and LayerNorms move it a little.
    def count(name: str) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in timm.create_model(name).parameters())

    plain = count(f"rdnet_{size}")
    assert 1.15 < count(f"kan_rdnet_{size}_gram") / plain < 1.3
    assert 2.1 < count(f"kan_rdnet_{size}_bspline") / plain < 2.3


@pytest.mark.parametrize("name", TEST_NAMES)
def test_tiny_forward_backward_each_basis(name):
    model = check_forward_backward(name, SIZE)
    assert_grads_finite(model)
    # Dense connectivity: the stem gets gradient through every stage.
    assert model.stem.weight.grad.abs().sum() > 0


def test_stage_concatenates_its_transition_output_and_every_block():
    model = create(TINY).eval()
    stage = model.dense_stages[1]
    x = torch.randn(2, model.feature_info[0]["num_chs"], 4, 4)
    out = stage(x)
    start = stage.transition(x)
    assert start.shape[-1] == 2  # this stage downsamples
    growth = sum(b.conv_project.out_channels for b in stage.blocks)
    assert out.shape[1] == start.shape[1] + growth == stage.out_chs
    torch.testing.assert_close(out[:, : start.shape[1]], start)


def test_block_is_layer_scaled_ese_over_the_kan_convs():
    model = create(TINY).eval()
    block = model.dense_stages[2].blocks[0]  # a stage with ESE
    assert isinstance(block.se, kan_rdnet.KANEffectiveSE)
    c = block.conv_dw.in_channels
    features = [torch.randn(2, c // 2, 2, 2), torch.randn(2, c - c // 2, 2, 2)]
    with torch.no_grad():
        block.gamma.uniform_(0.5, 1.5)  # a layer scale that is not one number
        y = block.conv_project(block.conv_expand(block.conv_dw(torch.cat(features, 1))))
        gate = (block.se.fc(y.mean((2, 3), keepdim=True)) + 3).clamp(0, 6) / 6  # hard sigmoid
        expected = y * gate * block.gamma.view(1, -1, 1, 1)
        torch.testing.assert_close(block(features), expected)
    # At init the layer scale is timm's 1e-6: new features start near zero.
    fresh = create(TINY).eval().dense_stages[2].blocks[0]
    assert torch.equal(fresh.gamma, torch.full_like(fresh.gamma, 1e-6))


def test_norms_are_layernorm_except_the_rbf_stem():
    gram, rbf = create("kan_test_rdnet_gram"), create("kan_test_rdnet_rbf")
    kan = [m for m in gram.modules() if isinstance(m, KANConv2d)]
    assert all(type(m.norm) is LayerNorm2d and m.norm.normalized_shape == (m.out_channels,) for m in kan)
    # rbf normalises its input: a per-pixel LayerNorm over 3 image channels would erase intensity.
    assert type(rbf.stem.norm) is nn.BatchNorm2d and rbf.stem.norm.num_features == 3
    assert all(type(m.norm) is LayerNorm2d for m in rbf.modules() if isinstance(m, KANConv2d) and m is not rbf.stem)
    # The head is timm's pool -> LayerNorm -> linear.
    assert isinstance(gram.head.norm, LayerNorm2d) and isinstance(gram.head.fc, nn.Linear)


def test_bottleneck_kan_convs_everywhere_but_the_depthwise_ones():
    model = create(TINY, bottleneck=True)
    blocks = [b for s in model.dense_stages for b in s.blocks]
    assert isinstance(model.stem, BottleneckKANConv2d)
    assert all(isinstance(s.transition, BottleneckKANConv2d) for s in model.dense_stages[1:])
    for b in blocks:
        assert type(b.conv_dw) is KANConv2d
        assert isinstance(b.conv_expand, BottleneckKANConv2d) and isinstance(b.conv_project, BottleneckKANConv2d)
    out = model(images())
    out.square().mean().backward()
    assert_grads_finite(model)
    with pytest.raises(ValueError, match="no bottleneck form"):
        create("kan_test_rdnet_rbf", bottleneck=True)


@pytest.mark.parametrize("arch", ["kan_test_rdnet_gram", "kan_test_rdnet_wavelet"])
def test_grad_checkpointing_same_outputs_and_grads(arch):
    check_grad_checkpointing(arch, SIZE)


def test_drop_rates():
    x = images()
    # (layer scale 1: at timm's 1e-6 a dropped block output would not move the logits past allclose)
    for kwargs in (dict(drop_rate=0.5), dict(proj_drop_rate=0.5, ls_init_value=1.0)):
        model = create(TINY, **kwargs)
        assert not torch.allclose(model(x), model(x)), kwargs  # dropout is live in training
        model.eval()
        torch.testing.assert_close(model(x), model(x))
    # Stochastic depth as timm's: the same rate within a stage, rising over the stages to drop_path_rate.
    model = create(TINY, drop_path_rate=0.3)
    assert [s.blocks[0].drop_path.drop_prob for s in model.dense_stages[1:]] == pytest.approx([0.1, 0.2, 0.3])
    assert isinstance(model.dense_stages[0].blocks[0].drop_path, nn.Identity)  # rate 0 in the first stage


@pytest.mark.parametrize(
    "check", [c for c in CONTRACT_CHECKS if c not in (check_classifier_reset, check_fits_a_fixed_batch)],
    ids=lambda check: check.__name__,
)
def test_timm_contract_on_the_tiny_model(check):
    check(TINY, SIZE)


def test_fits_a_fixed_batch():
    # A LayerNorm net without warm-up: at the BatchNorm families' Adam lr (1e-2) the per-sample norms let
    # the features collapse to the same vector for every image within a few steps (loss stuck at ln 4);
    # at 2e-3 the 8 images are fitted (15-step loss ratio 0.14-0.23 over seeds 0-3, the check asks < 0.5).
    check_fits_a_fixed_batch(TINY, SIZE, lr=2e-3)


def test_classifier_reset_keeps_the_head_layernorm():
    # As timm's RDNet: reset_classifier(0, '') drops the pool and the linear layer but keeps the
    # head's LayerNorm, so the output is the feature map normalised over channels at every pixel.
    def channel_layernorm(model, x):
        norm = model.head.norm
        y = nn.functional.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return y.permute(0, 3, 1, 2)

    check_classifier_reset(TINY, SIZE, unpooled_head=channel_layernorm)
    model, x = create(TINY).eval(), images()
    model.reset_classifier(0, "", reset_other=True)  # and without the norm: the features themselves
    torch.testing.assert_close(model(x), model.forward_features(x))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="one entry per stage"):
        kan_rdnet.KANRDNet(growth_rates=(8, 8), num_blocks_list=(1,), is_downsample_block=(None, True),
                           block_type=("Block", "Block"))
    with pytest.raises(ValueError, match="'Block' or 'BlockESE'"):
        kan_rdnet.KANRDNet(growth_rates=(8,), num_blocks_list=(1,), is_downsample_block=(None,), block_type=("SE",))
    with pytest.raises(ValueError, match="stage 1's transition would keep 0 of 12 channels"):
        kan_rdnet.KANRDNet(num_init_features=4, growth_rates=(8, 8), num_blocks_list=(1, 1),
                           is_downsample_block=(None, True), block_type=("Block", "Block"))
