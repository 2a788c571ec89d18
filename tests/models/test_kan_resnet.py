"""The KAN ResNet family against timm's model contract (fast: tiny networks at 32 px or the meta device)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from timm.models import FeatureGraphNet, group_parameters
from timm.models._features_fx import GraphExtractNet
from torch import nn

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.layers import BASES, KANConv2d
from kan_zoo.models import kan_resnet

FULL_NAMES = [f"kan_resnet{d}_{b}" for d in (18, 34, 50, 101, 152) for b in BASES]
TEST_NAMES = [f"kan_test_resnet_{b}" for b in BASES]
TINY = "kan_test_resnet_gram"
SIZE = 32  # the smallest input the family accepts: keeps every forward here cheap


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny convs gain nothing from intra-op threads, and on a loaded 2-core box (pytest -n 2) the
    # thread pools oversubscribe the cores and make each forward 10-100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(name: str = TINY, **kwargs) -> nn.Module:
    return timm.create_model(name, num_classes=kwargs.pop("num_classes", 5), **kwargs)


def _x(n: int = 2, chans: int = 3, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, chans, size, size)


def test_registry_has_every_depth_and_basis_and_no_weights():
    assert set(FULL_NAMES + TEST_NAMES) == set(timm.list_models("kan_*resnet*"))
    assert timm.list_pretrained("kan_*resnet*") == []
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model(TINY, pretrained=True)


@pytest.mark.parametrize("name", FULL_NAMES)
def test_full_models_build_on_meta(name):
    model = timm.create_model(name, device="meta")
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert model.num_features == model.head_hidden_size == model.feature_info[-1]["num_chs"]
    assert model.get_classifier().out_features == 1000
    # Spatial convs are KAN convs, every plain conv is a 1x1 (bottleneck squeeze/expand, downsample).
    kan = [m for m in model.modules() if isinstance(m, KANConv2d)]
    assert {m.kernel_size for m in kan} == {(7, 7), (3, 3)}
    assert all(m.kernel_size == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert {m.basis.name for m in kan} == {name.rsplit("_", 1)[1]}
    # Widths follow the documented rule: torchvision widths / width_divisor.
    arch, basis = name[len("kan_"):].rsplit("_", 1)
    assert model.conv1.out_channels == kan_resnet.ARCHS[arch][3] // kan_resnet.width_divisor(basis)
    cfg = model.pretrained_cfg
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "pool_size", "license", "paper_ids"):
        assert cfg.get(key) is not None, key
    assert not cfg.get("hf_hub_id") and not cfg.get("url")
    assert isinstance(model.get_submodule(cfg["first_conv"]), KANConv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert tuple(cfg["pool_size"]) == (cfg["input_size"][1] // 32, cfg["input_size"][2] // 32)


@pytest.mark.parametrize("name", TEST_NAMES)
def test_tiny_forward_backward_each_basis(name):
    model = _tiny(name)
    assert sum(p.numel() for p in model.parameters()) < 200_000
    out = model(_x())
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.fc.weight.grad.abs().sum() > 0


def test_zero_init_last_makes_blocks_start_as_identity():
    model = _tiny().eval()
    block = model.layer1[0]  # no downsample: the block should return its input
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    torch.testing.assert_close(block(x), x)
    model = _tiny(zero_init_last=False).eval()
    assert not torch.allclose(model.layer1[0](x), x)


def test_a_few_steps_fit_a_fixed_batch():
    # The blocks train as wired (no extra activations, zero-init-last): Adam overfits 8 images quickly.
    model = _tiny(num_classes=4)
    x, y = _x(8), torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_features_only_list_and_getter():
    x = _x()
    outs = {}
    for cls in ("list", "getter"):
        torch.manual_seed(0)  # same weights for both wrappers
        model = _tiny(features_only=True, feature_cls=cls).eval()
        assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
        feats = model(x)
        assert [f.shape[1] for f in feats] == model.feature_info.channels()
        assert [f.shape[-1] for f in feats] == [SIZE // r for r in model.feature_info.reduction()]
        outs[cls] = feats
    for a, b in zip(outs["list"], outs["getter"]):
        torch.testing.assert_close(a, b)
    model = _tiny(features_only=True, out_indices=(1, 3))
    assert model.feature_info.reduction() == [4, 16]


def test_forward_intermediates_and_prune():
    model = _tiny().eval()
    x = _x()
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [t.shape[1] for t in inter] == [f["num_chs"] for f in model.feature_info]
    torch.testing.assert_close(inter[-1], final)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and torch.equal(last_two[0], inter[3])
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], inter[1])

    kept = model.prune_intermediate_layers(indices=[0, 2])
    assert kept == [0, 2]
    assert model.num_features == model.feature_info[2]["num_chs"]
    assert isinstance(model.get_classifier(), nn.Identity)
    torch.testing.assert_close(model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)[1], inter[2])
    torch.testing.assert_close(model(x), inter[2])  # forward ends at the last kept stage, headless


@pytest.mark.parametrize("arch", ["kan_test_resnet_gram", "kan_test_resnet_wavelet"])
def test_grad_checkpointing_same_outputs_and_grads(arch):
    model = _tiny(arch)
    x = _x()
    out = model(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(model.forward_intermediates(x)[0], model.forward_features(x))


def test_classifier_reset_num_classes_zero_and_pre_logits():
    model = _tiny().eval()
    x = _x()
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(0, "")
    torch.testing.assert_close(model(x), feats)  # no pool, no classifier: the feature map itself
    headless = _tiny(num_classes=0).eval()
    assert headless(x).shape == (2, headless.num_features) and isinstance(headless.get_classifier(), nn.Identity)


def test_group_matcher_covers_every_parameter():
    model = _tiny()
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        names = [n for g in groups.values() for n in g]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        assert groups[0] == [n for n, _ in model.named_parameters() if n.startswith("conv1.")]


def test_in_chans_dtype_device_and_unknown_kwargs():
    model = _tiny(in_chans=1)
    assert model(_x(chans=1)).shape == (2, 5)
    model = _tiny(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(_x().double()).dtype == torch.float64
    assert all(p.is_meta for p in _tiny(device="meta").parameters())
    with pytest.raises(TypeError):
        _tiny(not_an_argument=1)


def test_drop_rate_and_drop_path():
    model = _tiny(drop_rate=0.5)
    x = _x()
    assert not torch.allclose(model(x), model(x))  # head dropout is live in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model = _tiny(drop_path_rate=0.2)
    assert model.layer4[0].drop_path.drop_prob == pytest.approx(0.2)


def test_fx_feature_extraction_matches_eager():
    model = _tiny().eval()
    x = _x()
    graph = FeatureGraphNet(model, out_indices=(0, 1, 2, 3, 4))
    for a, b in zip(graph(x), model.forward_intermediates(x, intermediates_only=True)):
        torch.testing.assert_close(a, b)
    whole = GraphExtractNet(model, {"fc": "logits"})
    torch.testing.assert_close(whole(x), model(x))
    with pytest.raises(ValueError, match="at least 32x32"):
        whole(_x(size=16))  # the size check survives tracing


def test_bad_inputs_raise_clear_errors():
    model = _tiny().eval()
    with pytest.raises(ValueError, match=r"at least 32x32 .* got 16x40"):
        model(torch.randn(1, 3, 16, 40))
    with pytest.raises(ValueError, match=r"at least 32x32"):
        model.forward_intermediates(_x(size=31))
    with pytest.raises(ValueError, match="channels"):
        model(_x(chans=4))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, SIZE, SIZE))


def test_model_table_counts_match_the_layer_shapes():
    """scripts/model_table.py (the README table): its GMACs equal the MACs the conv/linear shapes imply."""
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
