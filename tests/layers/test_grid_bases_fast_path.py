"""The fused node's hand-written fast path of the grid bases (bspline, rbf, relu) and of bernstein:
expand_into equals the stacked expand, expand_backward equals autograd of expand, also on refitted
(non-uniform) grids. bspline's fast path runs as C kernels by default (kan_zoo.layers.kernels.native_kernels) and as
eager steps without them: both are checked."""
from typing import List

import pytest
import torch
from torch.func import functional_call

from kan_zoo.grid import update_grid
from kan_zoo.layers import BASES, KANConv2d
from kan_zoo.layers.bases.base import Basis

from layer_helpers import native_kernels_switched

GRID_BASES = ["bspline", "rbf", "relu"]
NATIVE_BASES = ["bspline"]  # bases with C kernels: their tests run with and without them


def _with_paths(cases: list) -> list:
    """Each case with native=True, and once more with native=False for the bases that have C kernels."""
    return [(*case, native) for case in cases for native in ((True, False) if case[0] in NATIVE_BASES else (True,))]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _check_against_expand(basis: Basis, t: torch.Tensor, groups: int) -> None:
    """expand_into vs torch.stack(expand) in the stacked layout; expand_backward vs autograd."""
    n, c = t.shape[:2]
    f = basis.num_functions
    expected = torch.stack(basis.expand(t), 1)  # (N, F, C, *spatial)
    expected = expected.unflatten(2, (groups, -1)).transpose(1, 2)  # (N, G, F, C / G, *spatial)
    out = torch.full((n, groups, f, c // groups) + t.shape[2:], float("nan"), dtype=t.dtype)
    with torch.no_grad():
        basis.expand_into(t, out)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)

    grad_out = torch.randn_like(out)
    td = t.clone().requires_grad_(True)
    params = [(name, p) for name, p in basis.named_parameters() if p.requires_grad]
    wanted = torch.autograd.grad(
        basis.expand(td), [td] + [p for _, p in params], [grad_out[:, :, i].flatten(1, 2) for i in range(f)]
    )
    with torch.no_grad():
        result = basis.expand_backward(t, grad_out)
    assert result is not None, "the fast path must not fall back to autograd"
    grad_t, grad_params = result
    torch.testing.assert_close(grad_t, wanted[0], rtol=1e-10, atol=1e-10)
    assert sorted(grad_params) == sorted(name for name, _ in params)
    for (name, _), want in zip(params, wanted[1:]):
        torch.testing.assert_close(grad_params[name], want, rtol=1e-10, atol=1e-10)


def _sample(shape: List[int]) -> torch.Tensor:
    # Wide enough to cover the grid, its edges and beyond (where every function is 0).
    return torch.randn(*shape, dtype=torch.float64) * 1.5


@pytest.mark.parametrize("basis_name,options,native", _with_paths([
    ("bspline", {"degree": 1}), ("bspline", {"degree": 2}), ("bspline", {"degree": 3}),
    ("bspline", {"degree": 3, "grid_size": 7, "grid_range": (-2.0, 1.0)}),
    ("rbf", {}), ("rbf", {"grid_size": 5, "grid_range": (-1.0, 3.0)}),
    ("relu", {}), ("relu", {"degree": 2, "grid_size": 4, "train_phases": False}),
    ("bernstein", {"degree": 1}), ("bernstein", {"degree": 2}), ("bernstein", {"degree": 3}),
    ("bernstein", {"degree": 5}),
]))
@pytest.mark.parametrize("groups", [1, 2])
def test_fast_path_matches_expand(basis_name, options, native, groups):
    torch.manual_seed(0)
    basis = BASES[basis_name](4, **options).double()
    if basis_name == "relu" and basis.phase_low.requires_grad:
        with torch.no_grad():  # per-channel phases off their initial values
            basis.phase_low.add_(0.05 * torch.randn_like(basis.phase_low))
            basis.phase_high.add_(0.05 * torch.randn_like(basis.phase_high))
    t = _sample([2, 4, 5, 3])
    t[0, 0, 0, :3] = basis.grid[:3].double() if hasattr(basis, "grid") else 0.0  # exactly on knots / centres
    with native_kernels_switched(native):
        _check_against_expand(basis, t, groups)


@pytest.mark.parametrize("basis_name,native", _with_paths([(name,) for name in GRID_BASES]))
def test_fast_path_after_grid_refit(basis_name, native):
    """update_grid moves the knots (non-uniform), rbf's width and relu's scale and phases."""
    torch.manual_seed(1)
    layer = KANConv2d(4, 4, 3, padding=1, basis=basis_name).double()
    x = torch.randn(6, 4, 6, 6, dtype=torch.float64).pow(3) + 0.3  # skewed: uneven quantiles
    before = {k: v.clone() for k, v in layer.basis.state_dict().items()}
    update_grid(layer, x)
    after = layer.basis.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the refit changed nothing"
    if basis_name == "bspline":
        steps = after["grid"].diff()
        assert (steps.max() - steps.min()) > 1e-3, "the refitted knots should be non-uniform"
    with native_kernels_switched(native):
        _check_against_expand(layer.basis, _sample([2, 4, 5, 3]), 1)


@pytest.mark.parametrize("basis_name,options,native", _with_paths([
    ("bspline", {}), ("rbf", {}), ("relu", {}), ("relu", {"train_phases": False}), ("bernstein", {}),
]))
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_layer_gradcheck_through_fused_node(basis_name, options, native, memory_efficient, monkeypatch):
    """float64 finite differences of a training-mode KANConv2d, whose backward runs expand_backward."""
    torch.manual_seed(2)
    layer = KANConv2d(4, 4, 3, padding=1, groups=2, basis=basis_name, memory_efficient=memory_efficient,
                      **options).double().train()
    if basis_name == "bspline":
        update_grid(layer, torch.randn(4, 4, 5, 5, dtype=torch.float64).pow(3))  # non-uniform knots
    calls = []
    fast = type(layer.basis).expand_backward

    def counted(self, t, grad_out, **options):
        calls.append(options)
        return fast(self, t, grad_out, **options)

    monkeypatch.setattr(type(layer.basis), "expand_backward", counted)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters() if p.requires_grad)

    def run(inp, *ps):
        return functional_call(layer, dict(zip(names, ps)), (inp,))

    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    with native_kernels_switched(native):
        y = run(x, *params)
        assert any("ExpandConv" in type(node).__name__ for node in _graph_nodes(y.grad_fn))
        assert torch.autograd.gradcheck(run, (x,) + params, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert calls, "the backward did not go through expand_backward"
    if layer.basis.backward_reads_functions:  # given the Gaussians the conv ran on instead of recomputing them
        assert all(options.get("functions") is not None for options in calls)


def _graph_nodes(root) -> list:
    seen, stack = [], [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen


def test_host_values_follow_every_change_of_the_buffer():
    """The fast paths read knots / widths as floats, cached per buffer: refits, loads and moves must show."""
    import copy
    import pickle

    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    basis = layer.basis
    first = basis.host_values("grid", torch.float32)
    assert first == basis.grid.tolist()
    update_grid(layer, torch.randn(64, 4, 5, 5).pow(3))  # in place: same tensor, new version
    assert basis.host_values("grid", torch.float32) == basis.grid.tolist() != first
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    fresh = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    fresh.basis.host_values("grid", torch.float32)
    fresh.load_state_dict(state)
    assert fresh.basis.host_values("grid", torch.float32) == basis.grid.tolist()
    doubled = copy.deepcopy(layer).double()  # a new tensor, and another dtype
    assert doubled.basis.host_values("grid", torch.float64) == doubled.basis.grid.tolist()
    pickle.loads(pickle.dumps(layer))  # nothing unpicklable is stored on the module


def test_bernstein_degree_0_is_ones_with_no_gradient():
    basis = BASES["bernstein"](4, degree=0).double()
    t = torch.rand(2, 4, 3, 3, dtype=torch.float64)
    out = torch.full((2, 1, 1, 4, 3, 3), float("nan"), dtype=torch.float64)
    basis.expand_into(t, out)
    assert torch.equal(out, torch.ones_like(out))
    grad_t, grads = basis.expand_backward(t, torch.randn_like(out))
    assert torch.equal(grad_t, torch.zeros_like(t)) and grads == {}


def test_rbf_backward_from_the_forward_values_equals_recomputing():
    torch.manual_seed(3)
    basis = BASES["rbf"](4, grid_size=6).double()
    t = _sample([2, 4, 5, 3])
    values = torch.empty((2, 2, 6, 2, 5, 3), dtype=torch.float64)
    basis.expand_into(t, values)
    grad_out = torch.randn_like(values)
    recomputed, _ = basis.expand_backward(t, grad_out)
    read, _ = basis.expand_backward(t, grad_out, functions=values)
    torch.testing.assert_close(read, recomputed, rtol=1e-14, atol=1e-14)
