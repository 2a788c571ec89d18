"""The C basis kernels (kan_zoo.layers.kernels.native_kernels): the bspline, relu and rbf kernels and the wavelet node's
chunk kernels against the eager paths (the same steps in the same order) and finite differences, in every
layout the layers hand them, and the build machinery (cache, atomic writes, fallbacks, one OpenMP runtime)."""
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator

import pytest
import torch

from kan_zoo.grid import update_grid
from kan_zoo.layers import KANConv1d, KANConv2d, KANConv3d, set_memory_efficient
from kan_zoo.layers.bases.bspline import BSplineBasis
from kan_zoo.layers.bases.rbf import RBFBasis
from kan_zoo.layers.bases.relu import ReLUBasis
from kan_zoo.layers.kernels import native_kernels

from layer_helpers import assert_same_results, native_kernels_switched, run_with_grads

pytestmark = pytest.mark.usefixtures("one_thread")

BASES = ["bspline", "relu", "rbf"]  # the bases with C kernels


@pytest.fixture(autouse=True)
def _built_for_real() -> Iterator[None]:
    """Without a compiler the kernels fall back to eager, which would make the comparisons below vacuous:
    fail instead (the CI machines have gcc)."""
    for library, name in [(basis, f"{basis}_expand") for basis in BASES] + [("wavelet", "wavelet_psi")]:
        assert native_kernels.kernel(library, name, torch.float32) is not None, (
            f"the C kernels {library!r} could not be built: is a C compiler installed?")
    yield


def _inputs(shape, knots: torch.Tensor) -> torch.Tensor:
    """Normal values over the knot span, plus every knot exactly and points outside the span."""
    t = torch.randn(shape, dtype=torch.float64) * 1.5
    flat = t.view(-1)
    special = torch.cat([knots.double(), torch.tensor([-5.0, 5.0, 1.9999], dtype=torch.float64)])
    flat[: len(special)] = special
    return t


def _eager_and_native(basis, t: torch.Tensor, groups: int, grad_out: torch.Tensor, **options):
    """(out, dL/dt, parameter gradients) of the basis's fast path without, then with, the C kernels."""
    n, c = t.shape[:2]
    shape = (n, groups, basis.num_functions, c // groups) + t.shape[2:]
    results = []
    for enabled in (False, True):
        out = torch.full(shape, float("nan"), dtype=t.dtype)
        with native_kernels_switched(enabled), torch.no_grad():
            assert basis.expands_in_pieces(t) is not enabled
            basis.expand_into(t, out)
            grad_t, param_grads = basis.expand_backward(t, grad_out, **options)
        results.append((out, grad_t, param_grads))
    return results


def _refitted(basis: BSplineBasis) -> BSplineBasis:
    """Knots moved apart unevenly, as grid refits leave them (still increasing)."""
    with torch.no_grad():
        gaps = torch.rand(len(basis.grid) - 1, dtype=basis.grid.dtype) + 0.2
        basis.grid.copy_(torch.cat([basis.grid[:1], basis.grid[0] + gaps.cumsum(0)]))
    return basis


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
@pytest.mark.parametrize("refitted", [False, True])
def test_bspline_kernels_equal_cox_de_boor(degree, refitted):
    basis = BSplineBasis(4, degree=degree, grid_size=5).double()
    if refitted:
        _refitted(basis)
    t = _inputs((3, 4, 7, 5), basis.grid)
    grad_out = torch.randn(3, 2, basis.num_functions, 2, 7, 5, dtype=torch.float64)
    (out, grad_t, params), (out_k, grad_k, params_k) = _eager_and_native(basis, t, 2, grad_out)
    assert params == params_k == {}
    # The same steps in the same order: equal to the last bits, at every knot too.
    torch.testing.assert_close(out_k, out, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-13, atol=1e-14)
    # Partition of unity inside the span where every function is whole (B-splines sum to 1 there).
    g = basis.grid
    inside = (t >= g[degree]) & (t < g[-degree - 1])
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
    (out, grad_t, params), (out_k, grad_k, params_k) = _eager_and_native(basis, t, 2, grad_out)
    assert out.abs().sum() > 0 and not out.isnan().any()
    torch.testing.assert_close(out_k, out, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-13, atol=1e-14)
    assert params_k.keys() == params.keys() == ({"phase_low", "phase_high"} if train_phases else set())
    for name in params:  # summed in another order (double per thread, then across threads)
        torch.testing.assert_close(params_k[name], params[name], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kept", [False, True], ids=["recomputed", "kept"])
def test_rbf_kernels_equal_the_eager_fast_path(kept):
    basis = RBFBasis(4).double()
    with torch.no_grad():  # a refitted grid: uneven centres, another width
        basis.grid.add_(torch.rand_like(basis.grid) * 0.2)
        basis.inv_width.mul_(1.3)
    t = torch.randn(3, 4, 7, 5, dtype=torch.float64) * 2
    grad_out = torch.randn(3, 2, basis.num_functions, 2, 7, 5, dtype=torch.float64)
    functions = torch.stack(basis.expand(t), 1).unflatten(2, (2, -1)).transpose(1, 2).contiguous() if kept else None
    (out, grad_t, params), (out_k, grad_k, params_k) = _eager_and_native(basis, t, 2, grad_out, functions=functions)
    assert params == params_k == {}
    torch.testing.assert_close(out_k, out, rtol=1e-14, atol=1e-15)  # exp within an ulp of torch's
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype,max_ulp", [(torch.float32, 1.5), (torch.float64, 1.0)])
def test_the_rbf_kernels_exp_is_within_an_ulp_of_the_exact_value(dtype, max_ulp):
    """rbf's kernels evaluate exp themselves (to vectorize without -ffast-math): against float64 exp for
    float32 and torch's own exp for float64, over the whole range, subnormal results and overflow included."""
    low, high = (-110.0, 90.0) if dtype == torch.float32 else (-750.0, 710.0)
    y = torch.cat([torch.linspace(low, high, 400_001, dtype=torch.float64),
                   -torch.rand(100_000, dtype=torch.float64) * 30]).to(dtype)
    out = torch.empty_like(y)
    native_kernels.call(native_kernels.kernel("rbf", "rbf_exp", dtype), y, out, y.numel())
    exact = torch.exp(y.double()) if dtype == torch.float32 else torch.exp(y)
    rounded = exact.to(dtype)
    ulp = (torch.nextafter(rounded.abs(), torch.tensor(float("inf"), dtype=dtype)) - rounded.abs()).double()
    finite = torch.isfinite(rounded) & torch.isfinite(ulp) & (rounded > 0)
    assert ((out.double() - exact.double()).abs() / ulp)[finite].max() <= max_ulp
    assert torch.equal(out[rounded == 0], rounded[rounded == 0]) and torch.isinf(out[torch.isinf(rounded)]).all()


def _wavelet_layer(wavelet_type: str, dtype: torch.dtype = torch.float64) -> KANConv2d:
    layer = KANConv2d(4, 6, 3, padding=1, stride=2, groups=2, basis="wavelet", wavelet_type=wavelet_type).to(dtype)
    with torch.no_grad():  # a trained layer's per-edge scales and translations
        layer.basis.scale.uniform_(0.5, 1.5)
        layer.basis.translation.uniform_(-0.5, 0.5)
    return layer


@pytest.mark.parametrize("wavelet_type", ["mexican_hat", "dog", "morlet"])
def test_wavelet_chunk_kernels_equal_the_eager_chunks(wavelet_type, monkeypatch):
    """psi forward, and psi, the dL/dz sums and dL/dx backward, in float64 over many chunks (one output per
    chunk, positions split); morlet has no C kernel and keeps the eager chunks."""
    from kan_zoo.layers.kernels import fused_wavelet

    monkeypatch.setitem(fused_wavelet._CHUNK_ELEMENTS, "cpu", 40)
    layer = _wavelet_layer(wavelet_type)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    with native_kernels_switched(False):
        eager = run_with_grads(layer, x)
    uses_kernel = fused_wavelet._native_chunks(layer.basis, x, torch.float64, backward=True) is not None
    assert uses_kernel == (wavelet_type != "morlet")
    assert_same_results(run_with_grads(layer, x), eager, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_wavelet_layer_gradcheck_with_kernels(memory_efficient):
    layer = KANConv1d(2, 3, 3, padding=1, basis="wavelet", memory_efficient=memory_efficient).double()
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters() if p.requires_grad)
    x = (torch.rand(2, 2, 6, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (inp,)),
                                    (x,) + params, eps=1e-6, atol=1e-6)


def test_wavelet_kernels_float32_and_where_they_do_not_apply():
    from kan_zoo.layers.kernels import fused_wavelet

    layer = _wavelet_layer("mexican_hat", torch.float32)
    x = torch.randn(2, 4, 9, 8)
    with native_kernels_switched(False):
        eager = run_with_grads(layer, x)
    assert_same_results(run_with_grads(layer, x), eager, rtol=1e-5, atol=1e-5)
    # The kernel computes in the input's dtype: float64 parameters on a float32 input keep the eager chunks.
    assert fused_wavelet._native_chunks(layer.basis, x, torch.float32, backward=False) is not None
    assert fused_wavelet._native_chunks(layer.basis, x, torch.float64, backward=False) is None
    assert fused_wavelet._native_chunks(layer.double().basis, x, torch.float64, backward=False) is None


@pytest.mark.parametrize("basis,options", [("bspline", {}), ("bspline", {"degree": 1}), ("relu", {}), ("rbf", {})])
def test_nan_and_infinity_come_out_as_on_the_eager_path(basis, options):
    """A diverged input must stay visible: NaN propagates (torch's clamp and relu keep it) and infinities give
    what the eager ops give, forward and backward."""
    layer = KANConv2d(4, 4, 3, padding=1, groups=2, basis=basis, **options)
    t = torch.randn(2, 4, 5, 6)
    t[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])
    grad_out = torch.randn(2, 2, layer.basis.num_functions, 2, 5, 6)
    (out, grad_t, params), (out_k, grad_k, params_k) = _eager_and_native(layer.basis, t, 2, grad_out)
    assert out[0, 0, :, 0, 0, 0].isnan().all()  # (its gradient: NaN, or 0 where eager takes an indicator)
    torch.testing.assert_close(out_k, out, rtol=1e-6, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-5, atol=1e-6, equal_nan=True)
    for name in params:
        torch.testing.assert_close(params_k[name], params[name], equal_nan=True)


def test_nan_comes_out_of_the_wavelet_chunk_kernels():
    from kan_zoo.layers.kernels import fused_wavelet

    layer = _wavelet_layer("mexican_hat")
    t = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    t[1, 1, 3, 4] = float("nan")  # an input of group 0
    columns = fused_wavelet._columns(t)[:2]  # group 0's inputs
    inv_scale, shift = fused_wavelet._affine(layer.basis.scale.detach()[:3], layer.basis.translation.detach()[:3])
    grad_psi = torch.randn(3, 2, columns.shape[1], dtype=torch.float64)
    results = []
    for enabled in (False, True):
        with native_kernels_switched(enabled), torch.no_grad():
            kernels = fused_wavelet._ChunkKernels(layer.basis, t, torch.float64, backward=True)
            assert (kernels.native is not None) == enabled
            psi, grad_shift, grad_z_z, grad_columns, grad_z = kernels.backward(columns, inv_scale, shift,
                                                                               grad_psi.clone())
            if grad_z is not None:
                grad_columns = (grad_z * inv_scale[:, :, None]).sum(0)
            results.append((psi, grad_shift, grad_z_z, grad_columns))
    for eager, native in zip(*results):
        assert eager.isnan().any()
        torch.testing.assert_close(native, eager, rtol=1e-12, atol=1e-13, equal_nan=True)


def test_bspline_kernel_float32_matches_float64():
    basis = BSplineBasis(4, degree=3, grid_size=7)
    t = _inputs((2, 4, 9, 8), basis.grid)
    grad_out = torch.randn(2, 1, basis.num_functions, 4, 9, 8, dtype=torch.float64)
    (out64, grad64, _), = _eager_and_native(basis.double(), t, 1, grad_out)[1:]
    (out32, grad32, _), = _eager_and_native(basis.float(), t.float(), 1, grad_out.float())[1:]
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-5, atol=1e-5)


def test_bspline_kernel_backward_matches_finite_differences():
    basis = _refitted(BSplineBasis(4, degree=3, grid_size=5).double())
    t = torch.rand(2, 4, 6, dtype=torch.float64) * 4 - 2  # across the whole knot span
    grad_out = torch.randn(2, 1, basis.num_functions, 4, 6, dtype=torch.float64)

    def loss(tt: torch.Tensor) -> float:
        out = torch.empty_like(grad_out)
        basis.expand_into(tt, out)
        return (out * grad_out).sum().item()

    with torch.no_grad():
        grad_t, _ = basis.expand_backward(t, grad_out)
        eps = 1e-6
        for i in range(0, t.numel(), 3):
            step = torch.zeros_like(t).view(-1)
            step[i] = eps
            numeric = (loss(t + step.view_as(t)) - loss(t - step.view_as(t))) / (2 * eps)
            assert abs(numeric - grad_t.view(-1)[i].item()) < 1e-7


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_layer_gradcheck_with_kernels(basis, memory_efficient):
    layer = KANConv1d(4, 3, 3, padding=1, basis=basis).double()
    set_memory_efficient(layer, memory_efficient)
    assert not layer.basis.expands_in_pieces(torch.zeros(1, 4, 7, dtype=torch.float64))  # the kernel runs
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters() if p.requires_grad)
    x = (torch.rand(2, 4, 7, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (inp,)),
                                    (x,) + params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("basis", BASES)
def test_layer_with_kernels_equals_eager_layer_float32(basis):
    layer = KANConv2d(8, 6, 3, padding=1, basis=basis, groups=2, dropout=0.1)
    x = torch.randn(3, 8, 10, 9) * 1.2
    with native_kernels_switched(False):
        eager = run_with_grads(layer, x)
    native = run_with_grads(layer, x)
    set_memory_efficient(layer, True)
    native_lean = run_with_grads(layer, x)
    assert_same_results(native, eager, rtol=1e-5, atol=1e-5)
    assert_same_results(native_lean, native, rtol=0, atol=0)  # memory-efficient mode runs the same kernels


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("shape", [(2, 4, 9), (2, 4, 4, 5, 3), (0, 4, 6, 6), "channels_last"])
def test_kernels_in_1d_3d_empty_and_channels_last(basis, shape):
    cls = {3: KANConv1d, 5: KANConv3d}.get(len(shape), KANConv2d)
    layer = cls(4, 4, 3, padding=1, basis=basis)
    channels_last = shape == "channels_last"
    x = torch.randn(3, 4, 6, 6).to(memory_format=torch.channels_last) if channels_last else torch.randn(shape)
    with native_kernels_switched(False):
        eager = run_with_grads(layer, x)
    native = run_with_grads(layer, x)
    assert_same_results(native, eager, rtol=1e-5, atol=1e-6)


def test_refitted_grids_run_the_kernel_and_degree_0_keeps_eager(monkeypatch):
    calls = []
    original = native_kernels.call
    monkeypatch.setattr(native_kernels, "call", lambda fn, *a: calls.append(fn.__name__) or original(fn, *a))
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    x = torch.randn(2, 4, 6, 6)
    update_grid(layer, x * 0.5)  # knots follow the data: no longer evenly spaced
    with native_kernels_switched(False):
        eager = run_with_grads(layer, x)
    assert calls == []
    assert_same_results(run_with_grads(layer, x), eager, rtol=1e-5, atol=1e-6)
    assert calls == ["bspline_expand_f32", "bspline_backward_f32"]
    calls.clear()
    KANConv2d(4, 4, 3, padding=1, basis="bspline", degree=0)(x).sum().backward()
    assert calls == []


@pytest.mark.parametrize("basis", BASES)
def test_kernel_results_do_not_depend_on_the_thread_count(basis):
    layer = KANConv2d(4, 4, 3, padding=1, groups=2, basis=basis)
    t = torch.randn(2, 4, 33, 31)  # rows not a multiple of the kernels' tiles
    grad_out = torch.randn(2, 2, layer.basis.num_functions, 2, 33, 31)
    results, params = [], []
    for threads in (1, 2, 2, 1):
        torch.set_num_threads(threads)
        out = torch.empty_like(grad_out)
        with torch.no_grad():
            layer.basis.expand_into(t, out)
            grad_t, param_grads = layer.basis.expand_backward(t, grad_out)
        results.append([out, grad_t])
        params.append(param_grads)
    assert all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))
    for name in params[0]:
        # relu's phase sums: one partial sum per thread, added in thread order, so a thread count always gives
        # the same bits; another thread count splits the work differently: equal to rounding.
        assert torch.equal(params[3][name], params[0][name]) and torch.equal(params[2][name], params[1][name])
        torch.testing.assert_close(params[1][name], params[0][name], rtol=1e-6, atol=1e-6)


def test_kernels_apply_to_plain_float_cpu_tensors_outside_traces(monkeypatch):
    t = torch.randn(2, 3)
    assert native_kernels.native_kernels_apply(t) and native_kernels.native_kernels_apply(t.double())
    assert not native_kernels.native_kernels_apply(t.half())
    assert not native_kernels.native_kernels_apply(torch.empty(2, 3, device="meta"))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        assert not native_kernels.native_kernels_apply(mode.from_tensor(t))
    with native_kernels_switched(False):
        assert not native_kernels.native_kernels_apply(t)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not native_kernels.native_kernels_apply(t)


def test_block_strides():
    x = torch.empty(2, 3, 4, 5, 6)
    assert native_kernels.block_strides(x, 3) == (360, 120, 30)
    assert native_kernels.block_strides(x[:, :, 1:], 3) == (360, 120, 30)  # a slice of whole blocks
    assert native_kernels.block_strides(x[..., 1:], 3) is None  # rows with gaps
    assert native_kernels.block_strides(x.transpose(3, 4), 3) is None
    assert native_kernels.block_strides(torch.empty(2, 3, 1, 5)[:, :, :, :1], 2) == (15, 5)  # size-1 dims are free


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty kernel cache and no library loaded yet in this process."""
    monkeypatch.setenv("KAN_ZOO_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native_kernels, "_LIBRARIES", {})
    return tmp_path / "cache"


def test_built_once_then_loaded_from_the_cache(fresh_cache, monkeypatch):
    builds = []
    original = native_kernels._build
    monkeypatch.setattr(native_kernels, "_build", lambda *a: builds.append(a[-1]) or original(*a))
    assert native_kernels.kernel("bspline", "bspline_expand", torch.float32) is not None
    assert native_kernels.kernel("bspline", "bspline_backward", torch.float64) is not None
    files = sorted(p.name for p in fresh_cache.iterdir())
    assert len(builds) == 1 and files == [builds[0].name]  # no temporary left behind
    assert re.fullmatch(r"bspline-[0-9a-f]{16}\.so", files[0])
    monkeypatch.setattr(native_kernels, "_LIBRARIES", {})  # a new process: loads, does not build
    assert native_kernels.kernel("bspline", "bspline_expand", torch.float32) is not None
    assert len(builds) == 1


def test_a_damaged_cached_library_is_built_again(fresh_cache):
    flags = native_kernels._FLAG_SETS[0]
    name = native_kernels._library_name("bspline", native_kernels._source("bspline"), native_kernels._compiler(), flags)
    fresh_cache.mkdir(parents=True)
    (fresh_cache / name).write_bytes(b"not a shared library")  # e.g. written by a tool whose disk filled up
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native_kernels.kernel("bspline", "bspline_expand", torch.float32) is not None
    assert [p.name for p in fresh_cache.iterdir()] == [name] and (fresh_cache / name).read_bytes()[:4] == b"\x7fELF"


def test_processes_building_at_once_share_one_library(fresh_cache):
    """DDP on CPU starts several processes that reach their first KAN layer together: all of them load a
    library, and the cache ends with one file and no temporaries."""
    code = ("import torch; from kan_zoo.layers.kernels import native_kernels as n; "
            "assert n.kernel('relu', 'relu_expand', torch.float32) is not None")
    env = dict(os.environ, KAN_ZOO_KERNEL_CACHE=str(fresh_cache))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert [p.suffix for p in fresh_cache.iterdir()] == [".so"]


def test_the_library_name_follows_source_compiler_and_flags():
    name = native_kernels._library_name
    base = name("bspline", "int x;", "/usr/bin/cc", ("-O3",))
    assert base == name("bspline", "int x;", "/usr/bin/cc", ("-O3",))
    others = {name("bspline", "int y;", "/usr/bin/cc", ("-O3",)), name("bspline", "int x;", "/usr/bin/clang", ("-O3",)),
              name("bspline", "int x;", "/usr/bin/cc", ("-O2",))}
    assert base not in others and len(others) == 3


def test_without_a_compiler_the_layers_keep_eager_silently(fresh_cache, monkeypatch):
    monkeypatch.setattr(native_kernels, "_compiler", lambda: None)
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    x = torch.randn(2, 4, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(x)
    assert layer.basis.expands_in_pieces(x) and not fresh_cache.exists()
    with native_kernels_switched(False):
        torch.testing.assert_close(y, layer(x), rtol=0, atol=0)


def test_a_failed_build_warns_once_leaves_nothing_and_falls_back(fresh_cache, monkeypatch, tmp_path):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'no such compiler feature' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    x = torch.randn(2, 4, 6, 6)
    with pytest.warns(RuntimeWarning, match="no such compiler feature"):
        y = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y_again = layer(x)  # no second attempt, no second warning
    assert list(fresh_cache.iterdir()) == []
    with native_kernels_switched(False):
        torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    torch.testing.assert_close(y_again, y, rtol=0, atol=0)


def test_flags_the_compiler_refuses_are_dropped(fresh_cache, monkeypatch, tmp_path):
    """A compiler without -march=native or OpenMP still gets a (portable, single-threaded) library."""
    picky = tmp_path / "picky-cc"
    real = native_kernels._compiler()
    picky.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in -march=native|-fopenmp) '
                     f'echo "unsupported $a" >&2; exit 1;; esac; done\nexec {real} "$@"\n')
    picky.chmod(0o755)
    monkeypatch.setenv("CC", str(picky))
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline")
    x = torch.randn(2, 4, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        native = run_with_grads(layer, x)
    assert not layer.basis.expands_in_pieces(x) and len(list(fresh_cache.iterdir())) == 1
    with native_kernels_switched(False):
        assert_same_results(native, run_with_grads(layer, x), rtol=1e-5, atol=1e-6)


def test_an_unwritable_cache_builds_in_a_private_temporary_directory(fresh_cache, monkeypatch, tmp_path):
    fresh_cache.parent.mkdir(exist_ok=True)
    fresh_cache.write_text("a file where the cache directory should be")
    monkeypatch.setattr(native_kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert native_kernels.kernel("bspline", "bspline_expand", torch.float32) is not None
    assert [p.suffix for p in (tmp_path / "tmp").glob("kan_zoo-kernels-*/*")] == [".so"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process():
    """The kernels' OpenMP loops must run in the runtime torch loaded: a second one would bring a second
    thread pool that competes with torch's for the cores."""
    native_kernels.kernel("bspline", "bspline_expand", torch.float32)
    code = ("import torch; from kan_zoo.layers import KANConv2d; "
            "KANConv2d(4, 4, 3, padding=1, basis='bspline')(torch.randn(1, 4, 8, 8)).sum().backward(); "
            "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    runtimes = out.stdout.split()
    assert len(runtimes) == 1, runtimes
