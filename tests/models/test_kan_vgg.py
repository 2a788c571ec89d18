"""The KAN-conv VGG family against timm's model contract (fast: tiny networks or the meta device)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import kan_zoo  # noqa: F401  registers kan_* models
from kan_zoo.convert import convert_vgg_state_dict
from kan_zoo.layers import BASES, KANConvNd
from kan_zoo.models import kan_vgg
from reference_fixtures import FIXTURES, _fill_module

VGG_NAMES = [f"kan_vgg{d}_{b}" for d in (11, 13, 16, 19) for b in BASES] + [
    "kan_vgg11_bottleneck_gram", "kan_vgg11_slim_gram",
]
TEST_NAMES = [f"kan_test_vgg_{b}" for b in BASES]
CHECKPOINT_ARCHS = {
    "kan_vgg11_gram": "vgg_kagn11_v4",
    "kan_vgg11_slim_gram": "vgg_kagn11_v2",
    "kan_vgg11_bottleneck_gram": "vgg_kagn_bn11_v4",
}


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def test_registry_lists_every_name_and_only_real_pretrained_tags():
    assert set(VGG_NAMES + TEST_NAMES) <= set(timm.list_models("kan_*vgg*"))
    assert set(kan_vgg.MODEL_ARGS) == set(VGG_NAMES + TEST_NAMES)
    pretrained = set(timm.list_pretrained("kan_*vgg*"))
    assert pretrained == set(kan_vgg.PRETRAINED_WEIGHTS)


@pytest.mark.parametrize("name", VGG_NAMES)
def test_full_models_build_on_meta(name):
    model = _meta_model(name)
    assert [f["reduction"] for f in model.feature_info] == [1, 2, 4, 8, 16, 32]
    assert len(model.features) == sum(kan_vgg.MODEL_ARGS[name]["depths"]) + 5
    assert model.num_features == model.head_hidden_size == model.feature_info[-1]["num_chs"]
    assert model.get_classifier().out_features == 1000
    cfg = model.pretrained_cfg
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "pool_size", "license", "paper_ids"):
        assert cfg.get(key) is not None, key
    # first_conv / classifier name real modules with weights, as timm's loader needs.
    assert isinstance(model.get_submodule(cfg["first_conv"]), KANConvNd)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    # The declared pool size is what 224 px really gives.
    assert tuple(cfg["pool_size"]) == (cfg["input_size"][1] // 32, cfg["input_size"][2] // 32)


@pytest.mark.parametrize("name", sorted(CHECKPOINT_ARCHS))
def test_checkpoint_architectures_admit_key_for_key_conversion(name):
    """Every key and shape of the published checkpoint converts into the model, none left over."""
    fill = _fill_module()
    specs = fill.load_key_specs(FIXTURES / "models" / f"{CHECKPOINT_ARCHS[name]}.keys.txt")
    model = _meta_model(name)
    state = {spec[0]: torch.empty(spec[1], dtype=getattr(torch, spec[2]), device="meta") for spec in specs}
    converted = convert_vgg_state_dict(state, model)
    expected = model.state_dict()
    assert converted.keys() == expected.keys()
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_meta_param_counts_of_checkpoint_architectures():
    counts = {n: sum(p.numel() for p in _meta_model(n).parameters()) for n in CHECKPOINT_ARCHS}
    for tag, info in kan_vgg.PRETRAINED_WEIGHTS.items():
        assert counts[tag.split(".")[0]] == info["params"]


@pytest.mark.parametrize("name", TEST_NAMES)
def test_tiny_forward_backward_each_basis(name):
    model = timm.create_model(name, in_chans=1, num_classes=10)
    x = torch.randn(2, 1, 16, 16)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.fixture
def tiny():
    return timm.create_model("kan_test_vgg_gram", num_classes=7).eval()


def test_head_contract(tiny):
    x = torch.randn(2, 3, 16, 16)
    features = tiny.forward_features(x)
    assert features.shape == (2, tiny.num_features, 4, 4)
    pre = tiny.forward_head(features, pre_logits=True)
    assert pre.shape == (2, tiny.head_hidden_size)
    torch.testing.assert_close(pre, features.mean((2, 3)))
    torch.testing.assert_close(tiny.forward_head(features), tiny.get_classifier()(pre))

    tiny.reset_classifier(5)
    assert tiny(x).shape == (2, 5) and tiny.num_classes == 5
    tiny.reset_classifier(0)
    assert isinstance(tiny.get_classifier(), nn.Identity)
    torch.testing.assert_close(tiny(x), pre)
    tiny.reset_classifier(0, "")
    assert tiny(x).shape == features.shape


def test_num_classes_zero_drop_rate_and_kwargs():
    model = timm.create_model("kan_test_vgg_gram", num_classes=0, drop_rate=0.3)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, model.num_features)
    assert model.drop_rate == 0.3 and model.head.drop.p == 0.3
    with pytest.raises(TypeError):
        timm.create_model("kan_test_vgg_gram", not_an_argument=1)


def test_device_and_dtype_kwargs():
    model = timm.create_model("kan_test_vgg_chebyshev", dtype=torch.float64, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(1, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64
    model.reset_classifier(3)
    assert model.get_classifier().weight.dtype == torch.float64
    meta = timm.create_model("kan_test_vgg_chebyshev", device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}


def test_features_only_list_and_getter(tiny):
    x = torch.randn(2, 3, 16, 16)
    expected = tiny.forward_intermediates(x, intermediates_only=True)
    for feature_cls in ("list", "getter"):
        torch.manual_seed(0)  # the seed ``tiny`` was built with: same weights
        net = timm.create_model("kan_test_vgg_gram", features_only=True, feature_cls=feature_cls).eval()
        outs = net(x)
        assert net.feature_info.reduction() == [1, 2, 4]
        assert net.feature_info.channels() == [8, 16, 32]
        assert [o.shape[-1] for o in outs] == [16, 8, 4]
        for got, want in zip(outs, expected):
            torch.testing.assert_close(got, want)
    picked = timm.create_model("kan_vgg11_gram", features_only=True, out_indices=(1, 5), device="meta")
    assert picked.feature_info.reduction() == [2, 32]


def test_forward_intermediates_and_prune(tiny):
    x = torch.randn(2, 3, 16, 16)
    final, inter = tiny.forward_intermediates(x)
    torch.testing.assert_close(final, tiny.forward_features(x))
    assert [t.shape[1] for t in inter] == [8, 16, 32]
    last_two = tiny.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(last_two, inter[1:])
    early, picked = tiny.forward_intermediates(x, indices=[0, 1], stop_early=True)
    assert early.shape == inter[1].shape
    torch.testing.assert_close(picked, inter[:2])

    kept = tiny.prune_intermediate_layers([0, 1])
    assert kept == [0, 1]
    assert tiny.num_features == 16 and isinstance(tiny.get_classifier(), nn.Identity)
    torch.testing.assert_close(tiny.forward_intermediates(x, intermediates_only=True), inter[:2])
    torch.testing.assert_close(tiny.forward_features(x), inter[1])


def test_grad_checkpointing_gives_same_outputs_and_grads():
    # Train mode with the gram model's basis dropout: checkpointing must replay the same randomness.
    model = timm.create_model("kan_test_vgg_gram", num_classes=4).train()
    x = torch.randn(2, 3, 16, 16)
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)
        out = model(x)
        out.sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_group_matcher_covers_all_parameters(tiny):
    from timm.models import group_parameters

    groups = group_parameters(tiny, tiny.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(tiny.parameters()))


def test_fx_trace_matches_eager(tiny):
    from timm.models import create_feature_extractor

    extractor = create_feature_extractor(tiny, return_nodes=["features.2", "head.fc"]).eval()
    x = torch.randn(2, 3, 16, 16)
    out = extractor(x)
    torch.testing.assert_close(out["head.fc"], tiny(x))
    torch.testing.assert_close(out["features.2"], tiny.forward_intermediates(x, indices=[1], intermediates_only=True)[0])


def test_wrong_channels_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"in_chans=3.*4 channels"):
        tiny(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        tiny(torch.randn(3, 16, 16))


def test_too_small_input_names_the_minimum(tiny):
    # The tiny net has BatchNorm: in eval the two pools only need to leave one pixel.
    with pytest.raises(ValueError, match=r"2x2 is too small.*minimum input size is 4x4"):
        tiny(torch.randn(1, 3, 2, 2))
    assert tiny(torch.randn(1, 3, 4, 4)).shape == (1, 7)
    with torch.no_grad():  # shape-only forwards on the meta device
        # InstanceNorm on the published architecture: 32 px ends at 1x1; checked before any layer runs.
        model = _meta_model("kan_vgg11_gram")
        with pytest.raises(ValueError, match=r"1x1.*InstanceNorm.*minimum input size is 64x64"):
            model(torch.empty(1, 3, 32, 32, device="meta"))
        assert model(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 1000)
        # BatchNorm layers only need the pools to leave one pixel, and in training two values per channel.
        bn = _meta_model("kan_vgg11_bottleneck_gram").eval()
        assert bn.forward_features(torch.empty(1, 3, 32, 32, device="meta")).shape[-2:] == (1, 1)
        with pytest.raises(ValueError, match=r"minimum input size is 32x32"):
            bn(torch.empty(1, 3, 16, 16, device="meta"))
        bn.train()
        assert bn(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 1000)
        with pytest.raises(ValueError, match=r"BatchNorm in training.*minimum input size is 64x64"):
            bn(torch.empty(1, 3, 32, 32, device="meta"))


def test_input_check_keeps_the_batch_dynamic(tiny):
    # The check reads no int(x.shape[0]): torch.export and dynamo keep a symbolic batch, and still raise.
    x = torch.randn(2, 3, 16, 16)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(tiny, (x,), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        for n in (1, 5):
            xn = torch.randn(n, 3, 16, 16)
            torch.testing.assert_close(program.module()(xn), tiny(xn))
    with pytest.raises(ValueError, match=r"in_chans=3.*4 channels"):
        torch.export.export(tiny, (torch.randn(2, 4, 16, 16),), dynamic_shapes=({0: batch},))
    with pytest.raises(ValueError, match=r"minimum input size is 4x4"):
        torch.export.export(tiny, (torch.randn(2, 3, 2, 2),), dynamic_shapes=({0: batch},))
    compiled = torch.compile(tiny, backend="eager", dynamic=True)
    with torch.no_grad():
        for n in (2, 3):
            xn = torch.randn(n, 3, 16, 16)
            torch.testing.assert_close(compiled(xn), tiny(xn))
        with pytest.raises(ValueError, match=r"minimum input size is 4x4"):
            compiled(torch.randn(3, 3, 2, 2))
    bn = timm.create_model("kan_test_vgg_gram").train()  # BatchNorm in training: the batch is read
    with pytest.raises(ValueError, match=r"BatchNorm in training.*minimum input size is 8x8"):
        torch.compile(bn, backend="eager", dynamic=True)(torch.randn(1, 3, 4, 4))
