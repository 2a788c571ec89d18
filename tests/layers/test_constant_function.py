"""The fast paths leave a constant basis function (P_0 = 1, gram's SiLU(P_0)) out of the stacked tensor
and add its share of the convolution in closed form: same outputs and gradients as the plain path
(float64, so any slip in the closed form shows), in every conv geometry, and one function less kept."""
import functools

import pytest
import torch

from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv1d, KANConv2d, KANConv3d
from layer_helpers import assert_same_results, plain_autograd_copy, run_with_grads, saved_bytes

CONSTANT_BASES = [name for name, cls in BASES.items() if cls.separable and cls.has_constant_function]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


_assert_close = functools.partial(assert_same_results, rtol=1e-10, atol=1e-10, grad_rtol=1e-9)


def test_the_polynomial_bases_have_one():
    assert sorted(CONSTANT_BASES) == ["chebyshev", "gram", "jacobi", "legendre"]


@pytest.mark.parametrize("basis", CONSTANT_BASES)
@pytest.mark.parametrize("geometry", [
    dict(cls=KANConv2d, kernel_size=3, padding=1, groups=2),
    dict(cls=KANConv2d, kernel_size=3, padding=0, stride=2),
    dict(cls=KANConv2d, kernel_size=(3, 5), padding=(2, 1), dilation=(2, 1)),
    dict(cls=KANConv2d, kernel_size=3, padding="same", dilation=2),
    dict(cls=KANConv1d, kernel_size=5, padding=2, stride=3),
    dict(cls=KANConv3d, kernel_size=3, padding=1, groups=4),
], ids=["groups", "stride", "dilation", "same", "1d", "3d"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_closed_form_equals_the_plain_path(basis, geometry, memory_efficient):
    geometry = dict(geometry)
    cls = geometry.pop("cls")
    torch.manual_seed(0)
    layer = cls(4, 8, basis=basis, memory_efficient=memory_efficient, **geometry).double().train()
    assert layer.skips_constant(torch.zeros(1) if layer.base_folded else None)
    x = torch.randn((2, 4) + (7,) * cls.ndim, dtype=torch.float64) * 1.5
    fast = run_with_grads(layer, x)
    plain = run_with_grads(plain_autograd_copy(layer), x)
    _assert_close(fast, plain)
    with torch.no_grad():  # inference takes the closed form too
        torch.testing.assert_close(layer.eval()(x), plain_autograd_copy(layer).eval()(x), rtol=1e-10, atol=1e-10)


def test_bottleneck_and_dropout_too():
    torch.manual_seed(1)
    layer = BottleneckKANConv2d(8, 8, 3, padding=1, basis="gram", dim_reduction=2, dropout=0.3).double().train()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    _assert_close(run_with_grads(layer, x), run_with_grads(plain_autograd_copy(layer), x))


@pytest.mark.parametrize("basis,first", [("gram", 1), ("chebyshev", 0)])
def test_one_function_less_is_kept(basis, first):
    """Default mode keeps the input and the stacked basis: base branch (gram) + degree functions, not degree + 1."""
    layer = KANConv2d(4, 4, 3, padding=1, basis=basis, degree=3, norm_layer=None).train()
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    kept = saved_bytes(layer, x) - saved_bytes(KANConv2d(4, 4, 3, padding=1, basis=basis, degree=3,
                                                         norm_layer=None, memory_efficient=True).train(), x)
    assert kept == (first + 3) * x.numel() * 4


def test_degree_0_without_base_keeps_its_only_function():
    """Chebyshev at degree 0 has nothing but the constant: the layer then convolves it as it is."""
    layer = KANConv2d(4, 4, 3, padding=1, basis="chebyshev", degree=0).double().train()
    assert not layer.skips_constant(None)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    (y, grads), (y_plain, grads_plain) = run_with_grads(layer, x), run_with_grads(plain_autograd_copy(layer), x)
    # The output does not depend on x: plain autograd leaves x.grad unset, the fused node returns zeros.
    assert grads_plain.pop("input") is None and torch.equal(grads.pop("input"), torch.zeros_like(x))
    _assert_close((y, grads), (y_plain, grads_plain))
