"""The Triton path (kan_zoo.layers.kernels.triton_basis) against the torch path it replaces.

On a CUDA machine the kernels compile and run on the GPU; elsewhere (CI) they run on CPU tensors
under Triton's interpreter (TRITON_INTERPRET=1, set for this module only), the same kernel code.
"""
import os
from typing import Dict, List, Tuple

import pytest
import torch

pytest.importorskip("triton")

from kan_zoo.layers import (  # noqa: E402
    BottleneckKANConv2d, KANConv1d, KANConv2d, KANConv3d, set_memory_efficient, set_triton_enabled,
)
from kan_zoo.layers.kernels import triton_basis  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True, scope="module")
def _triton_on_this_device():
    with pytest.MonkeyPatch.context() as mp:
        if DEVICE == "cpu":
            mp.setenv("TRITON_INTERPRET", "1")  # read when the kernels module is first imported, and per call
        mp.setenv("KAN_ZOO_TRITON", "all")  # on a GPU, also the kernels not yet checked there
        # Both paths must convolve in full float32 for the tight comparisons (cuDNN defaults to TF32).
        mp.setattr(torch.backends.cudnn, "allow_tf32", False)
        previous = set_triton_enabled(True)
        yield
        set_triton_enabled(previous)


@pytest.fixture
def kernel_calls(monkeypatch) -> Dict[str, int]:
    """Counts launches of the forward and backward wrappers, to prove which path ran."""
    calls = {"forward": 0, "backward": 0}
    forward, backward = triton_basis.stacked_basis, triton_basis.basis_backward

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counted_backward(*args, **kwargs):
        calls["backward"] += 1
        return backward(*args, **kwargs)

    monkeypatch.setattr(triton_basis, "stacked_basis", counted_forward)
    monkeypatch.setattr(triton_basis, "basis_backward", counted_backward)
    return calls


def _step(layer, x: torch.Tensor, triton: bool,
          seed: int = 1) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """(output, dL/dx, {param: grad}) of one forward+backward with the Triton path on or off."""
    previous = set_triton_enabled(triton)
    try:
        torch.manual_seed(seed)  # the same dropout mask on both paths
        xx = x.detach().clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = layer(xx)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.device, y.dtype)
        y.backward(g)
    finally:
        set_triton_enabled(previous)
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), xx.grad, grads


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    assert ((a.float() - b.float()).abs().max() / scale).item() < rtol


CASES: List[Tuple[str, type, dict, tuple]] = [
    ("gram-d3", KANConv2d, dict(basis="gram", degree=3), (3, 8, 19, 23)),  # 10488 elements: 11 blocks, ragged tail
    ("gram-d5-groups", KANConv2d, dict(basis="gram", degree=5, groups=2), (2, 8, 9, 7)),
    ("gram-d1", KANConv2d, dict(basis="gram", degree=1), (2, 4, 5, 5)),
    ("gram-d0", KANConv2d, dict(basis="gram", degree=0), (2, 4, 5, 5)),
    ("gram-dropout", KANConv2d, dict(basis="gram", degree=3, dropout=0.3), (2, 8, 6, 6)),
    ("chebyshev", KANConv2d, dict(basis="chebyshev", degree=4), (2, 6, 7, 7)),
    ("legendre-groups", KANConv2d, dict(basis="legendre", groups=3), (2, 6, 7, 5)),
    ("jacobi", KANConv2d, dict(basis="jacobi", a=0.5, b=1.5), (2, 4, 6, 6)),
    ("bernstein", KANConv2d, dict(basis="bernstein", degree=4), (2, 4, 6, 6)),
    ("bernstein-d0-dropout", KANConv2d, dict(basis="bernstein", degree=0, dropout=0.3), (2, 4, 6, 6)),
    ("rbf", KANConv2d, dict(basis="rbf"), (2, 8, 7, 6)),  # base branch on x, basis on norm(x)
    ("rbf-groups-batchnorm", KANConv2d, dict(basis="rbf", groups=2, norm_layer="batch", grid_size=5), (3, 8, 5, 5)),
    ("bottleneck-bernstein", BottleneckKANConv2d, dict(basis="bernstein"), (2, 16, 6, 6)),
    ("bspline", KANConv2d, dict(basis="bspline"), (2, 6, 7, 7)),  # base branch GELU
    ("bspline-d1-groups", KANConv2d, dict(basis="bspline", degree=1, grid_size=4, groups=2), (2, 6, 5, 5)),
    ("bspline-d0-dropout", KANConv2d, dict(basis="bspline", degree=0, dropout=0.3), (2, 4, 5, 5)),
    ("bspline-d4-wide-range", KANConv2d, dict(basis="bspline", degree=4, grid_range=(-2.0, 3.0)), (2, 4, 6, 6)),
    ("bottleneck-bspline", BottleneckKANConv2d, dict(basis="bspline"), (2, 16, 6, 6)),
    ("relu", KANConv2d, dict(basis="relu"), (2, 6, 7, 7)),
    ("relu-groups-dropout", KANConv2d, dict(basis="relu", groups=2, dropout=0.3, grid_size=3, degree=2), (2, 6, 5, 9)),
    ("relu-fixed-phases-1d", KANConv1d, dict(basis="relu", train_phases=False), (2, 4, 40)),
    ("gram-1d", KANConv1d, dict(basis="gram", degree=3), (2, 4, 17)),
    ("legendre-3d", KANConv3d, dict(basis="legendre"), (1, 4, 4, 5, 3)),
    ("bottleneck-gram", BottleneckKANConv2d, dict(basis="gram", degree=3), (2, 16, 6, 6)),
]


@pytest.mark.parametrize("name,cls,options,shape", CASES, ids=[c[0] for c in CASES])
def test_triton_path_equals_torch_path(name, cls, options, shape, kernel_calls):
    layer = cls(shape[1], 6, 3, padding=1, **options).to(DEVICE)
    with torch.no_grad():  # away from the zero init, so the beta gradients are not trivially small
        for n, p in layer.named_parameters():
            if "beta" in n:
                p.normal_()
    x = (torch.randn(shape) * 1.5).to(DEVICE)
    y, dx, grads = _step(layer, x, triton=True)
    assert kernel_calls == {"forward": 1, "backward": 1}
    y_ref, dx_ref, grads_ref = _step(layer, x, triton=False)
    assert kernel_calls == {"forward": 1, "backward": 1}  # the torch path launched nothing
    _close(y, y_ref, 2e-6)
    _close(dx, dx_ref, 2e-6)
    assert grads.keys() == grads_ref.keys()
    for n in grads_ref:
        if grads_ref[n].abs().max() == 0:
            assert grads[n].abs().max() == 0, n
        else:
            # parameter gradients are sums over the batch and space: cuDNN's weight-gradient algorithms
            # sum in their own order (4.8e-6 seen on an H200 for this shape)
            _close(grads[n], grads_ref[n], 5e-5 if "beta" in n else 2e-5)


def test_beta_gradient_against_float64():
    """The kernel's block-wise float32 sums of dL/dbeta are as close to float64 autograd as the torch
    path's float32 sums are (float64 always takes the torch path)."""
    layer = KANConv2d(8, 6, 3, padding=1, basis="gram", degree=5).to(DEVICE)
    with torch.no_grad():
        layer.basis.beta_weights.normal_()
    x = torch.randn(4, 8, 20, 20).to(DEVICE)
    _, _, grads = _step(layer, x, triton=True)
    _, _, grads_torch = _step(layer, x, triton=False)
    _, _, grads64 = _step(layer.double(), x.double(), triton=True)
    exact = grads64["basis.beta_weights"]
    err = (grads["basis.beta_weights"].double() - exact).abs().max() / exact.abs().max()
    err_torch = (grads_torch["basis.beta_weights"].double() - exact).abs().max() / exact.abs().max()
    assert err < max(3 * err_torch, 1e-6), (err, err_torch)


def test_memory_efficient_mode_and_inference(kernel_calls):
    layer = KANConv2d(8, 8, 3, padding=1, basis="gram", degree=3).to(DEVICE)
    x = torch.randn(2, 8, 10, 10).to(DEVICE)
    y, dx, grads = _step(layer, x, triton=True)
    set_memory_efficient(layer, True)
    y_me, dx_me, grads_me = _step(layer, x, triton=True)
    assert kernel_calls == {"forward": 3, "backward": 2}  # memory-efficient: forward again in backward
    assert torch.equal(y, y_me) and torch.equal(dx, dx_me)
    assert all(torch.equal(grads[n], grads_me[n]) for n in grads)
    with torch.no_grad():
        assert torch.equal(layer(x), y)
    assert kernel_calls["forward"] == 4


def test_memory_efficient_mode_keeps_less(kernel_calls):
    """What autograd keeps: the Triton node like the torch node in memory-efficient mode, which drops
    the stacked basis: 5x the input here for the Triton node, 4x for the torch node (which leaves the
    constant function SiLU(P_0) out of it)."""
    x = torch.randn(2, 8, 10, 10, device=DEVICE, requires_grad=True)
    kept = {}
    for memory_efficient in (False, True):
        layer = KANConv2d(8, 8, 3, padding=1, basis="gram", degree=3, memory_efficient=memory_efficient).to(DEVICE)
        for triton in (True, False):
            previous = set_triton_enabled(triton)
            storages = {}

            def pack(t):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                layer(x)
            set_triton_enabled(previous)
            params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
            kept[memory_efficient, triton] = sum(n for ptr, n in storages.items() if ptr not in params)
    assert kernel_calls["forward"] == 2
    assert kept[True, True] == kept[True, False]
    assert kept[False, True] - kept[True, True] == 5 * x.numel() * 4
    assert kept[False, False] - kept[True, False] == 4 * x.numel() * 4


def test_autocast_bf16_matches_the_autocast_torch_path(kernel_calls):
    layer = KANConv2d(8, 8, 3, padding=1, basis="gram", degree=3).to(DEVICE)
    x = torch.randn(2, 8, 10, 10).to(DEVICE)
    results = []
    for triton in (True, False):
        previous = set_triton_enabled(triton)
        xx = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            y = layer(xx)
        y.float().pow(2).mean().backward()
        set_triton_enabled(previous)
        results.append((y, xx.grad, layer.weight.grad))
    assert kernel_calls == {"forward": 1, "backward": 1}
    (y, dx, dw), (y_ref, dx_ref, dw_ref) = results
    assert dx.dtype == torch.float32 and dw.dtype == torch.float32
    _close(y, y_ref, 2e-2)  # both convolve bf16 operands; roundings differ
    _close(dx, dx_ref, 5e-2)
    _close(dw, dw_ref, 5e-2)


def test_double_backward_through_the_triton_node():
    """create_graph=True (a gradient penalty) replays through torch ops; values equal the torch path."""
    layer = KANConv2d(4, 4, 3, padding=1, basis="legendre").to(DEVICE)
    x = torch.randn(2, 4, 6, 6).to(DEVICE)
    penalties = []
    for triton in (True, False):
        previous = set_triton_enabled(triton)
        xx = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(layer(xx).pow(2).sum(), xx, create_graph=True)
        penalty = gx.pow(2).sum()
        (gw,) = torch.autograd.grad(penalty, layer.weight)
        set_triton_enabled(previous)
        penalties.append((penalty.detach(), gw))
    _close(penalties[0][0], penalties[1][0], 1e-5)
    _close(penalties[0][1], penalties[1][1], 1e-5)


@pytest.mark.parametrize("case", ["float64", "disabled", "wavelet", "compile-style padding"])
def test_falls_back_to_the_torch_path(case, kernel_calls):
    options, dtype = dict(basis="gram", padding=1), torch.float32
    if case == "float64":
        dtype = torch.float64
    if case == "wavelet":
        options["basis"] = case
    if case == "compile-style padding":
        options = dict(basis="gram", padding="same", kernel_size=4)  # asymmetric 'same'
    kernel_size = options.pop("kernel_size", 3)
    layer = KANConv2d(4, 4, kernel_size, **options).to(DEVICE, dtype)
    x = torch.randn(2, 4, 6, 6, device=DEVICE, dtype=dtype)
    previous = set_triton_enabled(case != "disabled")
    try:
        layer(x.requires_grad_(True)).sum().backward()
    finally:
        set_triton_enabled(previous)
    assert kernel_calls == {"forward": 0, "backward": 0}


def test_bspline_on_refitted_knots(kernel_calls):
    """After a grid refit the knots are no longer uniform; the kernel reads them, as the torch path does."""
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline").to(DEVICE)
    with torch.no_grad():
        knots = layer.basis.grid
        knots.copy_(torch.sort(knots + 0.2 * torch.rand_like(knots) * (knots[1] - knots[0]))[0])
    x = torch.randn(2, 4, 8, 8).to(DEVICE)
    y, dx, grads = _step(layer, x, triton=True)
    y_ref, dx_ref, grads_ref = _step(layer, x, triton=False)
    assert kernel_calls == {"forward": 1, "backward": 1}
    _close(y, y_ref, 2e-6)
    _close(dx, dx_ref, 2e-6)


@pytest.mark.skipif(DEVICE != "cuda", reason="the CUDA gate")
def test_kernels_not_yet_run_on_a_gpu_need_opt_in(monkeypatch):
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline").cuda()
    x = torch.randn(1, 4, 5, 5, device="cuda")
    monkeypatch.delenv("KAN_ZOO_TRITON", raising=False)
    assert not triton_basis.triton_applies(layer, x, x, None)
    monkeypatch.setenv("KAN_ZOO_TRITON", "all")
    assert triton_basis.triton_applies(layer, x, x, None)


def test_switched_off_from_the_environment():
    """KAN_ZOO_TRITON=0 is read when kan_zoo is imported."""
    import subprocess
    import sys

    code = "import kan_zoo.layers as layers; print(layers.triton_enabled())"
    for value, expected in (("0", "False"), ("1", "True"), ("all", "True")):
        env = dict(os.environ, KAN_ZOO_TRITON=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_interpreter_is_only_used_when_asked(monkeypatch):
    """Without TRITON_INTERPRET, CPU tensors never take the Triton path."""
    if DEVICE == "cuda":
        pytest.skip("checks the CPU gate")
    monkeypatch.delenv("TRITON_INTERPRET")
    layer = KANConv2d(4, 4, 3, padding=1, basis="gram")
    x = torch.randn(1, 4, 5, 5)
    assert not triton_basis.triton_applies(layer, x, x, None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_basis.triton_applies(layer, x, x, None)
