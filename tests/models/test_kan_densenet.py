"""The KAN DenseNet family against timm's model contract (fast: tiny networks at 32 px or the meta device)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.layers import BASES, KANConv2d
from kan_zoo.models import kan_densenet
from model_checks import (
    CONTRACT_CHECKS, assert_grads_finite, check_forward_backward, check_full_model_cfg, check_grad_checkpointing,
    check_registry_without_weights, create, images,
)

FULL_NAMES = [f"kan_densenet{d}_{b}" for d in (121, 161, 169, 201) for b in BASES]
TEST_NAMES = [f"kan_test_densenet_{b}" for b in BASES]
TINY = "kan_test_densenet_gram"
SIZE = 32  # the smallest input the family accepts: keeps every forward here cheap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_has_every_depth_and_basis_and_no_weights():
    check_registry_without_weights("kan_*densenet*", FULL_NAMES + TEST_NAMES, TINY)


@pytest.mark.parametrize("name", FULL_NAMES)
def test_full_models_build_on_meta(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    check_full_model_cfg(model, KANConv2d)
    # Spatial convs are KAN convs (stem 7x7, one 3x3 per dense layer); every plain conv is a 1x1.
    arch, basis = name[len("kan_"):].rsplit("_", 1)
    growth, blocks, _ = kan_densenet.ARCHS[arch]
    kan = [m for m in model.modules() if isinstance(m, KANConv2d)]
    assert len(kan) == 1 + sum(blocks)
    assert {m.basis.name for m in kan} == {basis}
    assert all(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    # Growth rate follows the documented rule: torchvision growth / width_divisor.
    assert {m.out_channels for m in kan[1:]} == {growth // kan_densenet.width_divisor(basis)}


@pytest.mark.parametrize("name", TEST_NAMES)
def test_tiny_forward_backward_each_basis(name):
    model = check_forward_backward(name, SIZE)
    assert_grads_finite(model)
    # Dense connectivity: the stem conv gets gradient through every block.
    assert model.features.conv0.weight.grad.abs().sum() > 0


def test_dense_block_concatenates_input_and_every_layer():
    model = create(TINY).eval()
    block = model.features.denseblock1
    x = torch.randn(2, model.feature_info[0]["num_chs"], 8, 8)
    out = block(x)
    growth = block.denselayer1.conv2.out_channels
    assert out.shape[1] == x.shape[1] + len(block) * growth
    torch.testing.assert_close(out[:, : x.shape[1]], x)  # the input passes through untouched


@pytest.mark.parametrize("arch", ["kan_test_densenet_gram", "kan_test_densenet_wavelet"])
def test_grad_checkpointing_same_outputs_and_grads(arch):
    model = check_grad_checkpointing(arch, SIZE)
    assert all(m.grad_checkpointing for m in model.modules() if isinstance(m, kan_densenet.KANDenseLayer))


def test_drop_rates():
    x = images()
    for kwargs in (dict(drop_rate=0.5), dict(proj_drop_rate=0.5)):
        model = create(TINY, **kwargs)
        assert not torch.allclose(model(x), model(x)), kwargs  # dropout is live in training
        model.eval()
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda check: check.__name__)
def test_timm_contract_on_the_tiny_model(check):
    check(TINY, SIZE)
