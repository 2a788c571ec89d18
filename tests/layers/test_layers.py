"""Behaviour of the KAN layers: gradients, shapes, devices and dtypes, batch independence, errors."""
import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call

from kan_zoo.layers import (
    BASES,
    BottleneckKANConv1d,
    BottleneckKANConv2d,
    BottleneckKANConv3d,
    KANConv1d,
    KANConv2d,
    KANConv3d,
    KANLinear,
)

CONVS = {1: KANConv1d, 2: KANConv2d, 3: KANConv3d}
BOTTLENECKS = {1: BottleneckKANConv1d, 2: BottleneckKANConv2d, 3: BottleneckKANConv3d}
PLAIN = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BOTTLENECK_BASES = [b for b, cls in BASES.items() if cls.separable and not cls.normalizes_input]
SMALL = {1: (7,), 2: (5, 5), 3: (3, 4, 3)}


def _gradcheck_layer(layer: nn.Module, x: torch.Tensor) -> None:
    """Finite differences against autograd for the input AND every trainable parameter."""
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_() for n, p in layer.named_parameters() if p.requires_grad)

    def run(inp, *ps):
        return functional_call(layer, dict(zip(names, ps)), (inp,))

    # fast_mode compares random projections of the Jacobian (numerical vs analytical): as strict per
    # direction, and it keeps the 40-odd layer checks within seconds instead of many minutes.
    assert torch.autograd.gradcheck(
        run, (x.requires_grad_(),) + params, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("basis", list(BASES))
def test_gradcheck_every_basis_with_groups(basis, ndim):
    torch.manual_seed(0)
    # BatchNorm in train mode couples the batch; any norm works for gradcheck, batch keeps it cheap.
    layer = CONVS[ndim](4, 4, 3, padding=1, groups=2, basis=basis, degree=2, norm_layer="batch").double()
    _gradcheck_layer(layer, torch.randn(2, 4, *SMALL[ndim], dtype=torch.float64))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_gradcheck_bottleneck(ndim):
    layer = BOTTLENECKS[ndim](4, 4, 3, padding=1, groups=2, degree=3, norm_layer="batch", dim_reduction=2).double()
    _gradcheck_layer(layer, torch.randn(2, 4, *SMALL[ndim], dtype=torch.float64))


@pytest.mark.parametrize("basis", BOTTLENECK_BASES)
def test_gradcheck_bottleneck_bases(basis):
    layer = BottleneckKANConv2d(4, 6, 3, padding=1, basis=basis, degree=2, norm_layer="batch").double()
    _gradcheck_layer(layer, torch.randn(2, 4, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("basis", list(BASES))
def test_gradcheck_kan_linear(basis):
    if not BASES[basis].separable:
        pytest.skip("KANLinear refuses non-separable bases (tested below)")
    layer = KANLinear(3, 2, basis=basis, degree=2).double()
    _gradcheck_layer(layer, torch.randn(4, 3, dtype=torch.float64))


GEOMETRIES = [
    dict(kernel_size=3, stride=1, padding=0, dilation=1, groups=1),
    dict(kernel_size=3, stride=2, padding=1, dilation=1, groups=2),
    dict(kernel_size=3, stride=1, padding=2, dilation=2, groups=4),
    dict(kernel_size=1, stride=3, padding=0, dilation=1, groups=1),
    dict(kernel_size=5, stride=1, padding="same", dilation=1, groups=2),
]


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("bottleneck", [False, True])
def test_output_shape_matches_nn_conv(ndim, geometry, bottleneck):
    size = (9, 8, 7)[:ndim]
    x = torch.randn(2, 8, *size)
    expected = PLAIN[ndim](8, 12, **geometry)(x).shape
    cls = BOTTLENECKS[ndim] if bottleneck else CONVS[ndim]
    assert cls(8, 12, norm_layer="batch", **geometry)(x).shape == expected


def test_basis_channel_count_and_fused_weight_shape():
    layer = KANConv2d(6, 4, 3, groups=2, basis="gram", degree=3)
    # 3 inputs per group x (1 base + 4 Gram polynomials)
    assert layer.weight.shape == (4, 3 * 5, 3, 3)
    assert layer.coefficients().shape == (4, 5, 3, 3, 3)
    assert KANConv2d(6, 4, 3, basis="chebyshev", degree=3).weight.shape == (4, 6 * 4, 3, 3)
    assert KANConv2d(6, 4, 3, basis="bspline", grid_size=5, degree=3).weight.shape == (4, 6 * 9, 3, 3)


def test_degree_zero_works():
    # The reference Gram layer crashes at degree 0.
    for basis in ("gram", "chebyshev", "legendre", "jacobi", "bernstein", "bspline"):
        y = KANConv2d(3, 4, 3, basis=basis, degree=0)(torch.randn(2, 3, 6, 6))
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("basis", list(BASES))
def test_meta_device_and_dtype_construction(basis):
    layer = KANConv2d(8, 16, 3, padding=1, groups=2, basis=basis, device="meta", dtype=torch.bfloat16)
    params = list(layer.parameters())
    assert params and all(p.device.type == "meta" for p in params)
    assert all(p.dtype == torch.bfloat16 for p in params)
    y = layer(torch.empty(2, 8, 10, 10, device="meta", dtype=torch.bfloat16))
    assert y.shape == (2, 16, 10, 10) and y.device.type == "meta"
    bottleneck = BottleneckKANConv2d(8, 16, 3, device="meta")
    assert all(p.device.type == "meta" for p in bottleneck.parameters())


@pytest.mark.parametrize("basis", list(BASES))
def test_bfloat16_forward_and_autocast_are_finite(basis):
    x = torch.randn(2, 8, 10, 10)
    layer = KANConv2d(8, 8, 3, padding=1, groups=2, basis=basis, dtype=torch.bfloat16)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    layer32 = KANConv2d(8, 8, 3, padding=1, groups=2, basis=basis)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer32(x)
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer32.parameters() if p.grad is not None)


@pytest.mark.parametrize("basis", list(BASES))
@pytest.mark.parametrize("norm_layer", ["default", "batch"])
def test_eval_output_of_a_sample_does_not_depend_on_the_batch(basis, norm_layer):
    layer = KANConv2d(4, 6, 3, padding=1, basis=basis, norm_layer=norm_layer).eval()
    x = torch.randn(5, 4, 8, 8) * 3
    with torch.no_grad():
        batch = layer(x)
        alone = torch.cat([layer(x[i : i + 1]) for i in range(5)])
        other = layer(torch.cat([x[:1], 10 * torch.randn(3, 4, 8, 8)]))[:1]
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other, batch[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("basis", [b for b, cls in BASES.items() if cls.separable])
@pytest.mark.parametrize("bottleneck", [False, True])
def test_inference_fast_path_equals_the_stacked_expansion(basis, bottleneck, monkeypatch):
    """Without grad the layer writes the basis in place (expand_into) and adds a constant function's
    share in closed form; it must compute what the reference path (expand + stack + one conv, used
    under compile/export/autocast) computes."""
    from kan_zoo.layers.kernels import dispatch

    if bottleneck and basis not in BOTTLENECK_BASES:
        pytest.skip("no bottleneck form")
    torch.manual_seed(0)
    layer = (BOTTLENECKS if bottleneck else CONVS)[2](4, 6, 3, padding=1, groups=2, basis=basis).double().eval()
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64) * 1.5
    with torch.no_grad():
        fast = layer(x)
        monkeypatch.setattr(dispatch, "eager_fast_path", lambda u: False)  # force the reference path
        reference = layer(x)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)


def test_dropout_only_in_training():
    layer = KANConv2d(4, 4, 3, padding=1, dropout=0.5)
    x = torch.randn(2, 4, 6, 6)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, layer(x))


def test_kan_linear_matches_a_1x1_kan_conv_and_keeps_leading_dims():
    linear = KANLinear(5, 3, basis="legendre", degree=2)
    conv = KANConv1d(5, 3, 1, basis="legendre", degree=2, norm_layer=None)
    conv.load_state_dict(linear.state_dict())
    x = torch.randn(2, 7, 5)
    y = linear(x)
    assert y.shape == (2, 7, 3)
    torch.testing.assert_close(y.reshape(-1, 3), conv(x.reshape(-1, 5, 1)).squeeze(-1))
    assert isinstance(KANLinear(5, 3, output_activation=False).act, nn.Identity)


def test_the_basis_really_changes_the_function():
    # Every basis must contribute: zeroing all basis kernels (keeping the base) changes the output.
    for basis in BASES:
        layer = KANConv2d(3, 4, 3, padding=1, basis=basis, norm_layer=None).eval()
        x = torch.randn(2, 3, 6, 6)
        y = layer(x)
        with torch.no_grad():
            if BASES[basis].separable:
                layer.coefficients()[:, int(layer.base_folded) :].zero_()
            else:
                layer.basis.wavelet_weight.zero_()
        assert not torch.allclose(layer(x), y), basis


def test_bernstein_basis_is_a_partition_of_unity():
    basis = BASES["bernstein"](3, degree=4)
    t = torch.rand(2, 3, 5)
    torch.testing.assert_close(torch.stack(basis.expand(t)).sum(0), torch.ones_like(t))


def test_bspline_basis_is_a_partition_of_unity_inside_the_grid():
    basis = BASES["bspline"](3, degree=3, grid_size=5)
    x = torch.rand(2, 3, 5) * 1.98 - 0.99
    torch.testing.assert_close(torch.stack(basis.expand(x)).sum(0), torch.ones_like(x))


def test_orthogonal_polynomials_take_their_textbook_values():
    t = torch.tensor([-0.5, 0.0, 0.3, 0.9], dtype=torch.float64)
    legendre = torch.stack(BASES["legendre"](1, degree=3).expand(t))
    torch.testing.assert_close(legendre[3], 0.5 * (5 * t**3 - 3 * t))
    chebyshev = torch.stack(BASES["chebyshev"](1, degree=4).expand(t))
    torch.testing.assert_close(chebyshev[4], torch.cos(4 * torch.acos(t)))
    jacobi = torch.stack(BASES["jacobi"](1, degree=2, a=1.0, b=1.0).expand(t))
    # P_2^(1,1)(t) = (15 t^2 - 3) / 4
    torch.testing.assert_close(jacobi[2], (15 * t**2 - 3) / 4)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(in_channels=6, out_channels=4, groups=4), ValueError, r"in_channels \(6\).*divisible by groups \(4\)"),
        (dict(in_channels=8, out_channels=6, groups=4), ValueError, r"out_channels \(6\).*divisible by groups \(4\)"),
        (dict(degree=-1), ValueError, r"degree must be >= 0"),
        (dict(degree=2.5), TypeError, r"degree must be an int"),
        (dict(basis="fourier"), ValueError, r"unknown basis 'fourier'.*gram.*chebyshev.*wavelet.*relu"),
        (dict(basis="bspline", grid_size=0), ValueError, r"grid_size must be >= 1"),
        (dict(basis="rbf", grid_size=1), ValueError, r"grid_size must be >= 2"),
        (dict(basis="gram", grid_size=4), TypeError, r"bad option for basis 'gram'.*grid_size"),
        (dict(norm_layer="layernorm"), ValueError, r"unknown norm_layer 'layernorm'"),
        (dict(dropout=1.5), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(kernel_size=(3, 3, 3)), ValueError, r"kernel_size must be an int or a tuple of 2 ints"),
        (dict(padding="full"), ValueError, r"padding must be 'same', 'valid'"),
        (dict(basis="wavelet", wavelet_type="haar"), ValueError, r"unknown wavelet_type 'haar'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, pattern):
    args = dict(in_channels=8, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        KANConv2d(**args)


def test_wrong_input_rank_and_channels_raise_clear_errors():
    layer = KANConv2d(4, 8, 3)
    with pytest.raises(ValueError, match=r"KANConv2d expects a 4-D input \('N', 'C', 'H', 'W'\), got shape \(4, 10, 10\)"):
        layer(torch.randn(4, 10, 10))
    with pytest.raises(ValueError, match=r"built for 4 input channels, got an input with 3 channels"):
        layer(torch.randn(2, 3, 10, 10))
    with pytest.raises(ValueError, match=r"built for 4 input channels"):
        BottleneckKANConv2d(4, 8, 3)(torch.randn(2, 5, 10, 10))
    with pytest.raises(ValueError, match=r"built for 5 input features"):
        KANLinear(5, 2)(torch.randn(3, 4))


def test_bad_bottleneck_and_linear_arguments():
    with pytest.raises(ValueError, match="basis 'rbf' has no bottleneck form"):
        BottleneckKANConv2d(8, 8, 3, basis="rbf")
    with pytest.raises(ValueError, match="dim_reduction must be > 0"):
        BottleneckKANConv2d(8, 8, 3, dim_reduction=0)
    with pytest.raises(ValueError, match="non-separable basis 'wavelet'"):
        KANLinear(4, 2, basis="wavelet")
    with pytest.raises(ValueError, match="KANLinear cannot use instance norm"):
        KANLinear(4, 2, norm_layer="instance")


def test_bottleneck_inner_width_follows_the_reference_rule():
    # int(max(c, o) / r), raised to min(16, c, o) when below 16
    assert BottleneckKANConv2d(8, 160, 3, dim_reduction=8).inner == 20
    assert BottleneckKANConv2d(3, 32, 3, dim_reduction=8).inner == 3
    assert BottleneckKANConv2d(256, 512, 3, dim_reduction=8).inner == 64
    assert BottleneckKANConv2d(8, 16, 3, groups=2, dim_reduction=8).inner == 4
