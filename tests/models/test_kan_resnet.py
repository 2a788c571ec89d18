"""The KAN ResNet family against timm's model contract (fast: tiny networks at 32 px or the meta device)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.layers import BASES, KANConv2d
from kan_zoo.models import kan_resnet
from model_checks import (
    CONTRACT_CHECKS, check_forward_backward, check_full_model_cfg, check_grad_checkpointing,
    check_registry_without_weights, create, images,
)

FULL_NAMES = [f"kan_resnet{d}_{b}" for d in (18, 34, 50, 101, 152) for b in BASES]
TEST_NAMES = [f"kan_test_resnet_{b}" for b in BASES]
TINY = "kan_test_resnet_gram"
SIZE = 32  # the smallest input the family accepts: keeps every forward here cheap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_has_every_depth_and_basis_and_no_weights():
    check_registry_without_weights("kan_*resnet*", FULL_NAMES + TEST_NAMES, TINY)


@pytest.mark.parametrize("name", FULL_NAMES)
def test_full_models_build_on_meta(name):
    model = timm.create_model(name, device="meta")
    check_full_model_cfg(model, KANConv2d)
    # Spatial convs are KAN convs, every plain conv is a 1x1 (bottleneck squeeze/expand, downsample).
    kan = [m for m in model.modules() if isinstance(m, KANConv2d)]
    assert {m.kernel_size for m in kan} == {(7, 7), (3, 3)}
    assert all(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert {m.basis.name for m in kan} == {name.rsplit("_", 1)[1]}
    # Widths follow the documented rule: torchvision widths / width_divisor.
    arch, basis = name[len("kan_"):].rsplit("_", 1)
    assert model.conv1.out_channels == kan_resnet.ARCHS[arch][3] // kan_resnet.width_divisor(basis)


@pytest.mark.parametrize("name", TEST_NAMES)
def test_tiny_forward_backward_each_basis(name):
    model = check_forward_backward(name, SIZE)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.fc.weight.grad.abs().sum() > 0


def test_zero_init_last_makes_blocks_start_as_identity():
    model = create(TINY).eval()
    block = model.layer1[0]  # no downsample: the block should return its input
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    torch.testing.assert_close(block(x), x)
    model = create(TINY, zero_init_last=False).eval()
    assert not torch.allclose(model.layer1[0](x), x)


@pytest.mark.parametrize("arch", ["kan_test_resnet_gram", "kan_test_resnet_wavelet"])
def test_grad_checkpointing_same_outputs_and_grads(arch):
    check_grad_checkpointing(arch, SIZE)


def test_drop_rate_and_drop_path():
    model = create(TINY, drop_rate=0.5)
    x = images()
    assert not torch.allclose(model(x), model(x))  # head dropout is live in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model = create(TINY, drop_path_rate=0.2)
    assert model.layer4[0].drop_path.drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda check: check.__name__)
def test_timm_contract_on_the_tiny_model(check):
    check(TINY, SIZE)


def test_model_table_counts_match_the_layer_shapes():
    """scripts/model_table.py (the table in docs/models.md): its GMACs equal the MACs the conv/linear shapes imply."""
    script = Path(__file__).parents[2] / "scripts" / "model_table.py"
    spec = importlib.util.spec_from_file_location("model_table", script)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    name = "kan_resnet18_gram"
    assert name in table.classification_models("kan_resnet18_*")
    assert not any(n.startswith("kan_test_") for n in table.classification_models())
    params, gmacs = table.measure(name, img_size=64)

    model = timm.create_model(name, device="meta").eval()
    assert params == sum(p.numel() for p in model.parameters())
    macs = []

    def count(module, inputs, output):
        if isinstance(module, nn.Linear):
            macs.append(output.numel() * module.in_features)
        else:  # a (KAN) conv: every output element reads weight.shape[1] x kernel inputs
            macs.append(output.numel() * module.weight[0].numel())

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, KANConv2d, nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.empty(1, 3, 64, 64, device="meta"))
    assert gmacs == pytest.approx(sum(macs) / 1e9, rel=1e-6)
    assert f"| resnet18 | {table._fmt(params, gmacs)} |" in table.pivot_table({name: (params, gmacs)})
