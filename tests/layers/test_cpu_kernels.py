"""The compiled CPU basis kernels (kan_zoo.layers.cpu_kernels): the bspline, relu, rbf and wavelet kernels
against the eager fast paths (bspline's Cox-de Boor) and finite differences, where they apply and where
they must not, and the fallback when compilation fails. Each (kernel, dtype, input rank) compiles once
per process (a few seconds)."""
import contextlib
import os
import re
import subprocess
import sys
import warnings
from typing import Iterator

import pytest
import torch

from kan_zoo.grid import update_grid
from kan_zoo.layers import KANConv1d, KANConv2d, KANConv3d, cpu_kernels, set_cpu_kernels_enabled, set_memory_efficient
from kan_zoo.layers.bases import bspline as bspline_module
from kan_zoo.layers.bases import rbf as rbf_module
from kan_zoo.layers.bases import relu as relu_module
from kan_zoo.layers.bases.bspline import BSplineBasis, centered_bspline_terms
from kan_zoo.layers.bases.rbf import RBFBasis
from kan_zoo.layers.bases.relu import ReLUBasis

from layer_helpers import assert_same_results, run_with_grads

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("cpu_kernels")]  # compile once


@pytest.fixture(autouse=True)
def _compiled_for_real() -> Iterator[None]:
    """A failed compilation falls back to eager, which would make the comparisons below vacuous: fail instead
    (test_failed_compilation... sets the flag under monkeypatch, which is undone before this check)."""
    yield
    assert not cpu_kernels._FAILED, "a CPU kernel failed to compile (see the warning): is a C++ compiler installed?"


@contextlib.contextmanager
def _kernels(enabled: bool = True) -> Iterator[None]:
    """The kernels switched on (or off) for a block, then back as they were."""
    previous = set_cpu_kernels_enabled(enabled)
    try:
        yield
    finally:
        set_cpu_kernels_enabled(previous)


@pytest.fixture
def kernels_on() -> Iterator[None]:
    with _kernels(True):
        yield


def _exact_basis(degree: int, grid_size: int = 5) -> BSplineBasis:
    """A float64 basis whose knots are exactly uniform in float64 (the default ones are float32 linspace
    values), so that the closed form and Cox-de Boor agree to rounding."""
    basis = BSplineBasis(4, degree=degree, grid_size=grid_size).double()
    lo, hi = basis.grid_range
    h = (hi - lo) / grid_size
    basis.grid.copy_(torch.linspace(lo - degree * h, hi + degree * h, grid_size + 2 * degree + 1, dtype=torch.float64))
    return basis


def _inputs(shape) -> torch.Tensor:
    """Normal values, plus every knot exactly and points outside the knot span."""
    t = torch.randn(shape, dtype=torch.float64) * 1.5
    flat = t.view(-1)
    special = torch.tensor([-2.2, -1.8, -1.4, -1.0, -0.6, -0.2, 0.0, 0.2, 0.6, 1.0, 1.4, 1.8, 2.2, -5.0, 5.0, 1.9999],
                           dtype=torch.float64)
    flat[: len(special)] = special
    return t


def _eager_and_compiled(basis, t: torch.Tensor, groups: int, grad_out: torch.Tensor):
    n, c = t.shape[:2]
    shape = (n, groups, basis.num_functions, c // groups) + t.shape[2:]
    results = []
    for enabled in (False, True):
        out = torch.full(shape, float("nan"), dtype=t.dtype)
        with _kernels(enabled), torch.no_grad():
            basis.expand_into(t, out)
            grad_t, param_grads = basis.expand_backward(t, grad_out)
        results.append((out, grad_t, param_grads))
    return results


@pytest.mark.parametrize("degree", [2, 3])
def test_bspline_kernels_equal_cox_de_boor(degree):
    basis = _exact_basis(degree)
    t = _inputs((3, 4, 7, 5))
    grad_out = torch.randn(3, 2, basis.num_functions, 2, 7, 5, dtype=torch.float64)
    (out, grad_t, params), (out_k, grad_k, params_k) = _eager_and_compiled(basis, t, 2, grad_out)
    assert params == params_k == {}
    torch.testing.assert_close(out_k, out, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-11, atol=1e-12)
    # The kernel's expansion sums to 1 inside the grid range (partition of unity), as B-splines do.
    inside = (t > -1) & (t < 1)
    sums = out_k.sum(2).flatten(1, 2)
    torch.testing.assert_close(sums[inside], torch.ones_like(sums[inside]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("train_phases", [True, False])
def test_relu_kernels_equal_the_eager_fast_path(train_phases):
    basis = ReLUBasis(4, train_phases=train_phases).double()
    with torch.no_grad():  # phases and scale of a trained, refitted layer: per-channel values
        basis.phase_low.add_(torch.rand_like(basis.phase_low) * 0.1)
        basis.phase_high.add_(torch.rand_like(basis.phase_high) * 0.1)
        basis.scale.mul_(1.3)
    t = torch.randn(3, 4, 7, 5, dtype=torch.float64)
    grad_out = torch.randn(3, 2, basis.num_functions, 2, 7, 5, dtype=torch.float64)
    (out, grad_t, params), (out_k, grad_k, params_k) = _eager_and_compiled(basis, t, 2, grad_out)
    assert out.abs().sum() > 0 and not out.isnan().any()
    torch.testing.assert_close(out_k, out, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-11, atol=1e-12)
    assert params_k.keys() == params.keys() == ({"phase_low", "phase_high"} if train_phases else set())
    for name in params:
        torch.testing.assert_close(params_k[name], params[name], rtol=1e-11, atol=1e-12)


def test_rbf_kernels_equal_the_eager_fast_path():
    basis = RBFBasis(4).double()
    with torch.no_grad():  # a refitted grid: uneven centres, another width
        basis.grid.add_(torch.rand_like(basis.grid) * 0.2)
        basis.inv_width.mul_(1.3)
    t = torch.randn(3, 4, 7, 5, dtype=torch.float64) * 2
    grad_out = torch.randn(3, 2, basis.num_functions, 2, 7, 5, dtype=torch.float64)
    (out, grad_t, params), (out_k, grad_k, params_k) = _eager_and_compiled(basis, t, 2, grad_out)
    assert params == params_k == {}
    torch.testing.assert_close(out_k, out, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-11, atol=1e-12)


def test_bspline_kernel_backward_matches_finite_differences(kernels_on):
    basis = _exact_basis(3)
    t = torch.rand(2, 4, 6, dtype=torch.float64) * 4 - 2  # the whole knot span, away from nothing in particular
    grad_out = torch.randn(2, 1, basis.num_functions, 4, 6, dtype=torch.float64)

    def loss(tt: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(grad_out)
        basis.expand_into(tt, out)
        return (out * grad_out).sum()

    with torch.no_grad():
        grad_t, _ = basis.expand_backward(t, grad_out)
        eps = 1e-6
        for i in range(0, t.numel(), 5):
            step = torch.zeros_like(t).view(-1)
            step[i] = eps
            step = step.view_as(t)
            numeric = (loss(t + step) - loss(t - step)) / (2 * eps)
            assert abs(numeric.item() - grad_t.view(-1)[i].item()) < 1e-7


@pytest.mark.parametrize("basis", ["bspline", "relu", "rbf"])
def test_layer_with_kernels_equals_eager_layer_float32(basis):
    layer = KANConv2d(8, 6, 3, padding=1, basis=basis, groups=2, dropout=0.1)
    x = torch.randn(3, 8, 10, 9) * 1.2
    eager = run_with_grads(layer, x)
    with _kernels():
        compiled = run_with_grads(layer, x)
        assert not layer.basis.expands_in_pieces(x)
        set_memory_efficient(layer, True)
        compiled_lean = run_with_grads(layer, x)
    assert_same_results(compiled, eager, rtol=1e-5, atol=1e-5)
    assert_same_results(compiled_lean, compiled, rtol=0, atol=0)  # memory-efficient mode runs the same kernels


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_layer_gradcheck_with_kernels(kernels_on, memory_efficient):
    layer = KANConv1d(4, 3, 3, padding=1, basis="bspline").double()
    set_memory_efficient(layer, memory_efficient)
    x = (torch.rand(2, 4, 7, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, w: torch.func.functional_call(layer, {"weight": w}, (inp,)),
                                    (x, layer.weight.detach().clone().requires_grad_(True)), eps=1e-6, atol=1e-6)


def test_refitted_grid_and_low_degree_keep_the_eager_path(kernels_on, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernels, "run_compiled", lambda *a: calls.append(a) or (False, None))
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    x = torch.randn(2, 4, 6, 6)
    assert layer.basis._compiled_kernel_grid(x) is not None
    update_grid(layer, x * 0.5)  # knots follow the data: no longer evenly spaced
    assert layer.basis._compiled_kernel_grid(x) is None and layer.basis.expands_in_pieces(x)
    assert KANConv2d(4, 4, 3, padding=1, basis="bspline", degree=1).basis._compiled_kernel_grid(x) is None
    layer(x).sum().backward()
    assert calls == []


def test_kernels_off_by_default_on_with_the_environment_variable():
    if "KAN_ZOO_CPU_KERNELS" not in os.environ:
        assert set_cpu_kernels_enabled(False) is False  # the import-time default (tests restore what they change)
    code = "from kan_zoo.layers import cpu_kernels_enabled; print(cpu_kernels_enabled())"
    env = dict(os.environ, KAN_ZOO_CPU_KERNELS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_kernels_apply_to_float_cpu_tensors_outside_compile_traces(monkeypatch):
    t = torch.randn(2, 3)
    previous = set_cpu_kernels_enabled(True)
    try:
        assert cpu_kernels.cpu_kernels_apply(t)
        assert not cpu_kernels.cpu_kernels_apply(t.half())
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not cpu_kernels.cpu_kernels_apply(t)
    finally:
        assert set_cpu_kernels_enabled(previous) is True


def test_failed_compilation_warns_once_and_falls_back(kernels_on, monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(cpu_kernels, "_COMPILED", {})
    monkeypatch.setattr(cpu_kernels, "_FAILED", False)
    monkeypatch.setattr(cpu_kernels.torch, "compile", broken_compile)
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    x = torch.randn(2, 4, 6, 6)
    with pytest.warns(RuntimeWarning, match=re.escape("no C++ compiler here")):
        y = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y_again = layer(x)  # no second attempt, no second warning
    set_cpu_kernels_enabled(False)
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    torch.testing.assert_close(y_again, y, rtol=0, atol=0)


def test_centered_terms_give_the_cardinal_bspline():
    # Cubic: beta(0) = 2/3, beta(1) = 1/6, beta(2) = 0; quadratic: beta(0) = 3/4, beta(1/2) = 1/2, beta(3/2) = 0.
    def beta(degree: int, r: float) -> float:
        return sum(c * max(0.0, s - r) ** degree for c, s in centered_bspline_terms(degree))

    assert beta(3, 0.0) == pytest.approx(2 / 3) and beta(3, 1.0) == pytest.approx(1 / 6) and beta(3, 2.0) == 0
    assert beta(2, 0.0) == pytest.approx(3 / 4) and beta(2, 0.5) == pytest.approx(1 / 2) and beta(2, 1.5) == 0


@pytest.mark.parametrize("wavelet_type", ["mexican_hat", "morlet", "dog", "meyer"])
def test_wavelet_chunks_with_kernels_equal_eager_chunks(wavelet_type, monkeypatch):
    """The wavelet node's compiled chunk kernels (psi forward; psi, dL/dz sums and dL/dx backward) against
    its eager chunks, in float64 over many chunks (one output per chunk, positions split); meyer has no
    closed form and keeps the eager chunks."""
    from kan_zoo.layers import fused_wavelet

    monkeypatch.setitem(fused_wavelet._CHUNK_ELEMENTS, "cpu", 40)
    layer = KANConv2d(4, 6, 3, padding=1, stride=2, groups=2, basis="wavelet", wavelet_type=wavelet_type).double()
    with torch.no_grad():
        layer.basis.scale.uniform_(0.5, 1.5)
        layer.basis.translation.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    eager = run_with_grads(layer, x)
    with _kernels():
        assert fused_wavelet._compiled_chunks(layer.basis, x, torch.float64) == (wavelet_type != "meyer")
        compiled = run_with_grads(layer, x)
    assert_same_results(compiled, eager, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("basis", ["bspline", "relu", "rbf"])
def test_kernels_are_not_recompiled_for_new_shapes(kernels_on, basis):
    """Dynamic shapes: after a layer's first step, layers of other batch sizes, widths and image sizes run the
    same compiled code (each kernel may have at most cpu_kernels._GRAPHS_PER_KERNEL graphs)."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    module = {"bspline": bspline_module, "relu": relu_module, "rbf": rbf_module}[basis]
    names = ("_uniform_expand_kernel", "_uniform_backward_kernel") if basis == "bspline" else (
        "_expand_kernel", "_backward_kernel")
    codes = [getattr(module, name).__code__ for name in names]

    def step(n: int, c: int, size: int) -> None:
        layer = KANConv2d(c, c, 3, padding=1, basis=basis)
        layer(torch.randn(n, c, size, size, requires_grad=True)).sum().backward()

    step(2, 4, 6)
    graphs = [len(_debug_get_cache_entry_list(code)) for code in codes]
    assert all(graphs)
    for n, c, size in [(3, 8, 9), (4, 6, 5), (2, 12, 11)]:
        step(n, c, size)
    assert [len(_debug_get_cache_entry_list(code)) for code in codes] == graphs


@pytest.mark.parametrize("shape", [(2, 4, 9), (2, 4, 4, 5, 3), (0, 4, 6, 6), "channels_last"])
def test_bspline_kernels_in_1d_3d_empty_and_channels_last(shape):
    cls = {3: KANConv1d, 5: KANConv3d}.get(len(shape), KANConv2d)
    layer = cls(4, 4, 3, padding=1, basis="bspline")
    if shape == "channels_last":
        x = torch.randn(3, 4, 6, 6).to(memory_format=torch.channels_last)
    else:
        x = torch.randn(shape)
    eager = run_with_grads(layer, x)
    with _kernels():
        compiled = run_with_grads(layer, x)
    assert_same_results(compiled, eager, rtol=1e-5, atol=1e-6)
