"""The compiled CPU basis kernels (kan_zoo.layers.kernels.cpu_kernels), which the wavelet node's chunks use: against
the eager chunks and finite differences, where they apply and where they must not, and the fallback when
compilation fails (bspline, relu and rbf have C kernels instead: test_native_kernels.py). Each (kernel, dtype,
input rank) compiles once per process (a few seconds)."""
import contextlib
import re
import warnings
from typing import Iterator

import pytest
import torch

from kan_zoo.layers import KANConv1d, KANConv2d, set_cpu_kernels_enabled, set_memory_efficient
from kan_zoo.layers.kernels import cpu_kernels, switches

from layer_helpers import assert_same_results, run_with_grads

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("cpu_kernels")]  # compile once


@pytest.fixture(autouse=True)
def _without_c_kernels(monkeypatch) -> None:
    """The wavelet chunks prefer the C kernels (test_native_kernels.py) where both apply: off here."""
    monkeypatch.setattr(switches.NATIVE_KERNELS, "enabled", False)


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


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_layer_gradcheck_with_kernels(kernels_on, memory_efficient):
    from kan_zoo.layers.kernels import fused_wavelet

    layer = KANConv1d(2, 3, 3, padding=1, basis="wavelet").double()
    set_memory_efficient(layer, memory_efficient)
    x = (torch.rand(2, 2, 6, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)
    assert fused_wavelet._compiled_chunks(layer.basis, x, torch.float64)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters() if p.requires_grad)
    assert torch.autograd.gradcheck(lambda inp, *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (inp,)),
                                    (x,) + params, eps=1e-6, atol=1e-6)


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
    layer = KANConv2d(4, 4, 3, padding=1, basis="wavelet")
    x = torch.randn(2, 4, 6, 6)
    with pytest.warns(RuntimeWarning, match=re.escape("no C++ compiler here")):
        y = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y_again = layer(x)  # no second attempt, no second warning
    set_cpu_kernels_enabled(False)
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    torch.testing.assert_close(y_again, y, rtol=0, atol=0)


@pytest.mark.parametrize("wavelet_type", ["mexican_hat", "morlet", "dog", "meyer"])
def test_wavelet_chunks_with_kernels_equal_eager_chunks(wavelet_type, monkeypatch):
    """The wavelet node's compiled chunk kernels (psi forward; psi, dL/dz sums and dL/dx backward) against
    its eager chunks, in float64 over many chunks (one output per chunk, positions split); meyer has no
    closed form and keeps the eager chunks."""
    from kan_zoo.layers.kernels import fused_wavelet

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


def test_kernels_are_not_recompiled_for_new_shapes(kernels_on):
    """Dynamic shapes: after a few layers' steps, layers of other batch sizes, widths and image sizes run the
    same compiled code (each kernel may have at most cpu_kernels._GRAPHS_PER_KERNEL graphs)."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    from kan_zoo.layers.kernels import fused_wavelet

    codes = [fused_wavelet._psi_kernel.__code__, fused_wavelet._psi_backward_kernel.__code__]

    def step(n: int, c: int, size: int) -> None:
        layer = KANConv2d(c, c, 3, padding=1, basis="wavelet")
        layer(torch.randn(n, c, size, size, requires_grad=True)).sum().backward()

    for n, c, size in [(2, 4, 6), (3, 8, 9)]:
        step(n, c, size)
    graphs = [len(_debug_get_cache_entry_list(code)) for code in codes]
    assert all(graphs)
    for n, c, size in [(4, 6, 5), (2, 12, 11), (3, 5, 7)]:
        step(n, c, size)
    assert [len(_debug_get_cache_entry_list(code)) for code in codes] == graphs
