"""kan_zoo.peft: wrapped = pretrained exactly at the start, the intended tensors train, merge = wrapped, round trips,
the research code's PEFT fixture, and clear errors."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

import kan_zoo  # noqa: F401  registers the kan_* models
from kan_zoo import peft
from kan_zoo.convert import convert_layer_state_dict
from kan_zoo.layers import BottleneckKANConv2d, KANConv2d
from kan_zoo.layers.helpers import CONV_FNS
from reference_fixtures import FIXTURES, relative_error

# (basis, extra_degrees, trainable_degrees): Bernstein takes degree deltas only.
CASES = [("gram", 1, (0, 2)), ("gram", 2, ()), ("chebyshev", 1, (1,)), ("legendre", 2, (0, 3)),
         ("jacobi", 1, (2,)), ("bernstein", 0, (1, 3))]
MODEL = "kan_test_vgg_gram"  # gram degree 5, BatchNorm, convs 1 -> 8 -> 16 -> 32 (in_chans=1)


def _layer(cls, basis, *, dtype=torch.float64, groups=1, norm_layer="batch", dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layer = cls(4, 6, 3, padding=1, groups=groups, basis=basis, degree=3, norm_layer=norm_layer, dropout=dropout)
    with torch.no_grad():
        for p in layer.basis.parameters():  # away from the init, so that every beta matters
            p.normal_(0.0, 0.3)
    return layer.to(dtype)


def _fill(module: nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Every adapter tensor of ``module`` away from zero (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".adapter." in f".{name}":
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)


def _wrap(layer, extra, trainable, train_base=None):
    train_base = layer.has_base if train_base is None else train_base
    return peft.wrap_layer(layer, extra_degrees=extra, trainable_degrees=trainable, train_base=train_base)


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return timm.create_model(MODEL, num_classes=5, in_chans=1).to(dtype)


# -- the start: exactly the pretrained outputs --------------------------------------------------------------------
@pytest.mark.parametrize("cls", [KANConv2d, BottleneckKANConv2d], ids=["conv", "bottleneck"])
@pytest.mark.parametrize("basis,extra,trainable", CASES)
@pytest.mark.parametrize("mode", ["eval", "train", "memory_efficient"])
def test_wrapped_layer_starts_exactly_at_the_pretrained_outputs(cls, basis, extra, trainable, mode):
    """Same code on the same tensors plus an exact zero: torch.equal, in the eval fast path, the training node
    (with dropout: the adapter reuses the layer's mask) and memory-efficient mode; float32."""
    layer = _layer(cls, basis, dtype=torch.float32, dropout=0.0 if mode == "eval" else 0.25)
    layer.memory_efficient = mode == "memory_efficient"
    layer.train(mode != "eval")
    x = torch.randn(2, 4, 6, 6, requires_grad=mode != "eval")

    def run():
        torch.manual_seed(7)  # the same dropout mask for both
        with torch.set_grad_enabled(mode != "eval"):
            return layer(x)

    before = run()
    _wrap(layer, extra, trainable)
    after = run()
    assert torch.equal(after, before)
    if mode != "eval":
        after.square().sum().backward()
        assert layer.adapter.weight.grad is not None


def test_wrapped_model_starts_exactly_at_the_pretrained_outputs():
    pretrained = _model(dtype=torch.float32)
    wrapped = peft.wrap_model(copy.deepcopy(pretrained), extra_degrees=2, trainable_degrees=(0, 1, 4),
                              train_base=True)
    x = torch.randn(3, 1, 16, 16)
    for mode in (False, True):  # eval: the inference fast path; train: BatchNorm on batch statistics, the node
        pretrained.train(mode), wrapped.train(mode)
        with torch.set_grad_enabled(mode):
            assert torch.equal(wrapped(x), pretrained(x))


# -- what trains --------------------------------------------------------------------------------------------------
def test_only_the_adapters_norms_and_head_get_gradients():
    model = peft.wrap_model(_model(), extra_degrees=1, trainable_degrees=(0, 3), train_base=True)
    _fill(model)
    model.train()
    model(torch.randn(4, 1, 16, 16, dtype=torch.float64)).logsumexp(1).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"features.{i}.{t}" for i in (0, 2, 4)
                for t in ("adapter.weight", "adapter.basis_deltas.beta_weights", "norm.weight", "norm.bias")}
    expected |= {"head.fc.weight", "head.fc.bias"}
    assert with_grad == trainable == expected
    for name in expected:
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_head_and_norm_policy_flags():
    model = peft.wrap_model(_model(), extra_degrees=1, train_head=False, train_norms=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = ("weight", "basis_deltas.beta_weights")
    assert trainable == {f"features.{i}.adapter.{t}" for i in (0, 2, 4) for t in adapters}


def test_bottleneck_train_base_trains_its_own_base_weight():
    layer = _wrap(_layer(BottleneckKANConv2d, "gram"), 1, (), train_base=True)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"base_weight", "adapter.weight", "adapter.basis_deltas.beta_weights"}


def test_trainable_parameter_count_equals_a_hand_count():
    """kan_test_vgg_gram (degree 5), extra 1, deltas on degrees 0 and 3, base delta: per layer 4 kernel blocks
    (base, P_0, P_3, P_6) of C_out x C_in x 3 x 3, and 2 beta entries (w_2 of P_3, w_5 of P_6)."""
    model = peft.wrap_model(_model(), extra_degrees=1, trainable_degrees=(0, 3), train_base=True)
    kernels = 4 * 9 * (8 * 1 + 16 * 8 + 32 * 16)  # 23328
    betas = 2 * 3
    norms = 2 * (8 + 16 + 32)
    head = 32 * 5 + 5
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == kernels + betas + norms + head == 23611


def test_gradients_match_finite_differences():
    """gradcheck in float64 through the frozen layer's training node and the adapter's term: the input, the
    adapter kernels and the beta deltas (a pretrained degree and a new one)."""
    torch.manual_seed(0)
    layer = KANConv2d(2, 3, 3, padding=1, basis="gram", degree=2, norm_layer=None).double()
    with torch.no_grad():
        layer.basis.beta_weights.normal_(0.0, 0.3)
    _wrap(layer, 1, (0, 2))
    _fill(layer)
    names = ["adapter.weight", "adapter.basis_deltas.beta_weights"]
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    params = [layer.get_parameter(n).detach().clone().requires_grad_(True) for n in names]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("cls", [KANConv2d, BottleneckKANConv2d], ids=["conv", "bottleneck"])
@pytest.mark.parametrize("basis,extra,trainable", CASES)
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "rebuilt"])
def test_adapter_node_equals_its_plain_ops(cls, basis, extra, trainable, keep):
    """The eager node (functions written in place, hand adjoint; the stacked tensor kept or rebuilt) against the
    same term in plain autograd ops, float64, groups 2: outputs, first and second derivatives. Same recurrences
    and one conv of K <= 4 * 2 * 9 products either way: within ~K * D * eps of each other (rtol 1e-10 is wide)."""
    from kan_zoo.peft import _AdapterTerm

    layer = _wrap(_layer(cls, basis, groups=2, norm_layer=None), extra, trainable)
    _fill(layer)
    adapter = layer.adapter
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, layer.basis.channels, 5, 5, generator=g, dtype=torch.float64)
    t = adapter._basis(layer).prepare(u).requires_grad_(True)
    x = (torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64).requires_grad_(True)
         if adapter.train_base else None)
    weight = adapter._conv_weight(layer).detach().requires_grad_(True)
    params = [p.detach().requires_grad_(True) for p in adapter.effective_basis_parameters(layer).values()]
    inputs = [v for v in (t, x, weight, *params) if v is not None]
    results = []
    for node in (True, False):
        y = (_AdapterTerm.apply(adapter, layer, keep, t, x, weight, *params) if node
             else adapter._plain_term(layer, t, x, weight, *params))
        grads = torch.autograd.grad(y.square().sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum(gr.square().sum() for gr in grads), inputs, allow_unused=True)
        results.append((y, grads, second))
    for a, b in zip(*results):
        for va, vb in zip([a] if torch.is_tensor(a) else a, [b] if torch.is_tensor(b) else b):
            if va is None or vb is None:
                assert va is None and vb is None or (va if vb is None else vb).abs().max() == 0
                continue
            torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-12)


def test_wrapped_layer_compiles_to_one_graph_with_eager_values():
    """torch.compile sees the plain ops (Gram with a beta delta: the parameter swap included), one graph."""
    layer = _wrap(_layer(KANConv2d, "gram", dtype=torch.float32), 1, (0, 2))
    _fill(layer)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    eager = layer(x)
    eager_grad, = torch.autograd.grad(eager.sum(), layer.adapter.weight)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    compiled_grad, = torch.autograd.grad(compiled.sum(), layer.adapter.weight)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)  # float32, different op order
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-5, atol=1e-5)


# -- merging ------------------------------------------------------------------------------------------------------
def _merge_bound(merged, x: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |wrapped - merged| before the norm. Each computes sums of K products of the same
    values (the merged kernel is the sum of the pretrained one and the delta, each basis value the same
    recurrence), so each is within gamma_K * sum|w f| of the exact value [Higham, Accuracy and Stability, 3.1];
    K + 3 covers the wrapped side's two convolutions, the closed-form constant and the kernel sums."""
    with torch.no_grad():
        u = F.conv2d(x, merged.proj_in_weight, groups=merged.groups) if isinstance(merged, BottleneckKANConv2d) else x
        base = x if merged.base_folded else None
        stacked = merged.stacked_basis(base, u, None).abs()
        scale = merged._conv(stacked, merged.weight.abs(), merged.groups)
        k = merged.weight.shape[1] * math.prod(merged.kernel_size) + 3
        bound = 2 * k * torch.finfo(x.dtype).eps * scale
        if isinstance(merged, BottleneckKANConv2d):
            bound = CONV_FNS[2](bound, merged.proj_out_weight.abs(), groups=merged.groups) * (1 + 1e-12)
    return bound


@pytest.mark.parametrize("cls", [KANConv2d, BottleneckKANConv2d], ids=["conv", "bottleneck"])
@pytest.mark.parametrize("basis,extra,trainable", CASES)
@pytest.mark.parametrize("groups", [1, 2])
def test_merged_layer_equals_wrapped_within_the_rounding_bound(cls, basis, extra, trainable, groups):
    """float64, no norm: the merged layer's pre-activation differs by at most the summation bound; SiLU (where the
    basis has it) is 1.1-Lipschitz."""
    layer = _layer(cls, basis, groups=groups, norm_layer=None).eval()
    _wrap(layer, extra, trainable)
    _fill(layer)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        wrapped = layer(x)
        peft.merge_layer(layer)
        merged = layer(x)
    assert layer.adapter is None and layer.basis.degree == 3 + extra
    assert layer.weight.requires_grad and all(p.requires_grad for p in layer.parameters())
    bound = _merge_bound(layer, x) * 1.1
    assert ((wrapped - merged).abs() <= bound).all(), ((wrapped - merged).abs() / bound).max()
    assert not torch.equal(wrapped, _layer(cls, basis, groups=groups, norm_layer=None).eval()(x))  # it changed


def test_merged_model_equals_wrapped_in_float64_and_exports_like_any_model(tmp_path):
    from kan_zoo.hub import export_to_folder

    model = peft.wrap_model(_model(), extra_degrees=1, trainable_degrees=(0, 3), train_base=True)
    _fill(model, std=0.05)
    model.eval()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        wrapped = model(x)
        assert peft.merge(model) is model
        merged = model(x)
    # Three layers of ~K = 32 * 16 * 9 products each (relative error ~K * eps = 5e-13 before BatchNorm's gain).
    assert relative_error(merged, wrapped) < 1e-10
    assert all(p.requires_grad for p in model.parameters())
    assert {m.basis.degree for m in model.modules() if isinstance(m, KANConv2d)} == {6}
    assert not list(peft.adapted_layers(model))
    folder = export_to_folder(model.float(), tmp_path / "merged")
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert reloaded.features[0].basis.degree == 6
    with torch.no_grad():
        assert torch.equal(reloaded(x.float()), model(x.float()))


# -- state dict round trip ---------------------------------------------------------------------------------------
def test_wrapped_state_dict_round_trip(tmp_path):
    model = peft.wrap_model(_model(dtype=torch.float32), extra_degrees=2, trainable_degrees=(1, 2))
    _fill(model)
    path = tmp_path / "wrapped.safetensors"
    save_file(model.state_dict(), str(path))
    state = load_file(str(path))
    assert {"features.2.adapter.weight", "features.2.adapter.basis_deltas.beta_weights"} <= state.keys()
    fresh = peft.wrap_model(_model(seed=1, dtype=torch.float32), extra_degrees=2, trainable_degrees=(1, 2))
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 16, 16)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    other = peft.wrap_model(_model(dtype=torch.float32), extra_degrees=1)  # another wrapping: a clear mismatch
    with pytest.raises(RuntimeError, match="adapter"):
        other.load_state_dict(state, strict=True)


# -- the research code's PEFT layer ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_peft_fixture(dtype):
    """PEFTKAGNConvNDLayer.wrap_layer(KAGNConv2DLayer(8 -> 6, degree 3), trainable_degrees=[0, 2], extra 1): zero
    init bit-equal to the base layer, filled within the fixture README's float32 rule (float64 too: the fixture is
    float32, 3.8e-7 from float64 by the README)."""
    t = load_file(str(FIXTURES / "extras" / "peft_kagn2d_extra1_delta02.safetensors"))
    st = {k[len("state."):]: v for k, v in t.items() if k.startswith("state.")}
    layer = KANConv2d(8, 6, 3, padding=1, basis="gram", degree=3, norm_layer="instance")
    base = {k: st[k] for k in ("base_conv.0.weight", "beta_weights", "poly_weights")}
    layer.load_state_dict(convert_layer_state_dict(base, target=layer))
    layer = layer.to(dtype).eval()
    x = t["input"].to(dtype)
    with torch.no_grad():
        pretrained = layer(x)
        assert relative_error(pretrained, t["output_base"]) < 1e-5
        peft.wrap_layer(layer, extra_degrees=1, trainable_degrees=(0, 2))
        assert torch.equal(layer(x), pretrained)
        assert torch.equal(t["output_wrapped_zero_init"], t["output_base"])
        # Research layout: delta blocks of degrees 0 and 2, then the extra degree 4; its beta_weights_delta[k] is
        # for trainable_degrees[k] (degree 0's is unused), its beta_weights_extra[0] for degree 4.
        assert layer.adapter.blocks == (0, 2, 4)
        layer.adapter.weight.copy_(torch.cat([st["poly_weights_delta"][0], st["poly_weights_extra"][0]], 1))
        layer.adapter.basis_deltas["beta_weights"].copy_(
            torch.stack([st["beta_weights_delta"][1], st["beta_weights_extra"][0]]))
        filled = layer(x)
        reference = t["output_wrapped_filled"]
        assert relative_error(filled, reference) < 1e-5
        assert relative_error(filled, pretrained) > 0.1  # the fill matters: the check can fail
        peft.merge_layer(layer)
        assert relative_error(layer(x), reference) < 1e-5


# -- errors -------------------------------------------------------------------------------------------------------
def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="bspline basis, whose functions are not indexed by a polynomial degree"):
        peft.wrap_model(timm.create_model("kan_test_vgg_bspline"))
    with pytest.raises(ValueError, match="bernstein basis, whose degree-3 functions are not among those of degree 4"):
        peft.wrap_model(timm.create_model("kan_test_vgg_bernstein"))
    peft.wrap_model(timm.create_model("kan_test_vgg_bernstein"), extra_degrees=0, trainable_degrees=(0,))
    with pytest.raises(ValueError, match=r"trainable_degrees \[6\] out of range for KAN conv 'features.0', of degree"):
        peft.wrap_model(_model(), trainable_degrees=(0, 6))
    with pytest.raises(ValueError, match="Sequential has no KAN convs"):
        peft.wrap_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="nothing to train"):
        peft.wrap_model(_model(), extra_degrees=0)
    with pytest.raises(ValueError, match="extra_degrees must be an int >= 0"):
        peft.wrap_model(_model(), extra_degrees=-1)
    with pytest.raises(ValueError, match="repeated degrees"):
        peft.wrap_model(_model(), trainable_degrees=(1, 1))
    with pytest.raises(TypeError, match="sequence of ints"):
        peft.wrap_model(_model(), trainable_degrees=2)
    with pytest.raises(ValueError, match="train_base=True, but KAN conv 'features.0' .chebyshev basis. has no base"):
        peft.wrap_model(timm.create_model("kan_test_vgg_chebyshev"), train_base=True)
    model = _model()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="out of range"):
        peft.wrap_model(model, trainable_degrees=(9,))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before  # checked before anything changed
    peft.wrap_model(model)
    with pytest.raises(ValueError, match="already has a PEFT adapter"):
        peft.wrap_model(model)
    with pytest.raises(ValueError, match="no PEFT adapters to merge"):
        peft.merge(_model())
