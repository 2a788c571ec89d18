"""KANActivation: shapes for every rank, per-channel independence, values, gradients on every basis."""
import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from kan_zoo.layers import BASES, KANActivation


@pytest.mark.parametrize("basis", list(BASES))
def test_gradcheck_every_basis(basis):
    act = KANActivation(3, basis).double()
    names = [n for n, p in act.named_parameters() if p.requires_grad]
    params = tuple(dict(act.named_parameters())[n].detach().clone().requires_grad_() for n in names)
    x = (torch.randn(2, 3, 4, dtype=torch.float64) * 0.7).requires_grad_()

    def fn(x, *p):
        return functional_call(act, dict(zip(names, p)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=True)


@pytest.mark.parametrize("shape", [(5, 4), (2, 4, 7), (2, 4, 3, 5), (1, 4, 2, 3, 2)])
@pytest.mark.parametrize("basis", ["bspline", "gram", "wavelet"])
def test_every_rank_keeps_shape(shape, basis):
    x = torch.randn(shape)
    assert KANActivation(4, basis)(x).shape == x.shape


@pytest.mark.parametrize("basis", ["bspline", "relu", "wavelet", "chebyshev"])
def test_channels_are_independent_and_pointwise(basis):
    act = KANActivation(3, basis)
    x = torch.randn(2, 3, 4, 4)
    y = act(x)
    x2 = x.clone()
    x2[:, 1, 0, 0] += 1.0
    changed = (act(x2) - y).abs() > 0
    assert changed[:, 1, 0, 0].all()
    changed[:, 1, 0, 0] = False
    assert not changed.any()  # no other channel or position moved


def test_bspline_starts_near_gelu_and_is_gelu_with_base_only():
    act = KANActivation(4)  # B-spline by default
    x = torch.linspace(-3, 3, 40).repeat(2, 4, 1)
    assert act.base_folded and act.num_functions == 1 + 5 + 3
    with torch.no_grad():
        act.weight[:, 1:] = 0
    torch.testing.assert_close(act(x), F.gelu(x))


def test_spline_part_is_the_sum_of_weighted_basis_functions():
    act = KANActivation(2, "rbf", grid_size=4)
    x = torch.randn(3, 2)
    functions = torch.stack(act.basis.expand(x), -1)  # (3, 2, 4)
    expected = act.weight[:, 0] * F.silu(x) + (functions * act.weight[:, 1:]).sum(-1)
    torch.testing.assert_close(act(x), expected)


def test_errors():
    with pytest.raises(ValueError, match="channels"):
        KANActivation(0)
    with pytest.raises(ValueError, match="unknown basis"):
        KANActivation(2, "nope")
    with pytest.raises(ValueError, match="built for 2 channels"):
        KANActivation(2)(torch.randn(1, 3, 4))
