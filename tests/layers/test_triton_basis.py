"""The Triton path (kan_zoo.layers.triton_basis) against the torch path it replaces.

On a CUDA machine the kernels compile and run on the GPU; elsewhere (CI) they run on CPU tensors
under Triton's interpreter (TRITON_INTERPRET=1, set for this module only), the same kernel code.
"""
import copy
import math
import os
from typing import Dict, List, Tuple

import pytest
import torch

pytest.importorskip("triton")

from kan_zoo.layers import (  # noqa: E402
    BottleneckKANConv2d, KANConv1d, KANConv2d, KANConv3d, set_memory_efficient, set_triton_enabled,
)
from kan_zoo.layers import triton_basis  # noqa: E402
from error_model import Bounded, conv_input_grad_bound, sum_bound  # noqa: E402
from seeding import generator  # noqa: E402

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


# -- dL/dbeta of gram: the kernel's per-block float32 sums against a float32 error model --------------
# What the kernel does (_triton_kernels._recurrence_backward, PARAM_GRADS): per element, t = tanh(u),
# P_i and q_ij = dP_i/dc_j by the recurrence, w_i = g_i SiLU'(P_i) and acc_j = sum_i w_i q_ij; then
# tl.reduce adds acc_j over a block of elements (Triton's interpreter adds them in sequence, a GPU in a
# layout-dependent tree: at most BLOCK - 1 additions per term either way), basis_backward adds the
# blocks' partials with torch (at most programs - 1) and multiplies by the constant factor. The model
# below follows it operation by operation with tests/error_model.Bounded, in float64.


def _kernel_tanh(u: torch.Tensor) -> Bounded:
    """_triton_kernels._tanh: the odd series below |u| = 0.25, else 1 - 2 / (e^2u + 1)."""
    assert bool((u.abs() < 20).all())  # below the exp branch's clamp
    x = Bounded.exact(u)
    x2 = x * x
    c = [Bounded.literal(v, x.value) for v in (1.0, -1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0)]
    series = x * (c[0] + x2 * (c[1] + x2 * (c[2] + x2 * (c[3] + x2 * c[4]))))
    one = Bounded.literal(1.0, x.value)
    exp_form = one - Bounded.literal(2.0, x.value) / (Bounded.exact(2.0 * u).exp() + one)  # 2u is exact
    tanh = torch.tanh(x.value)
    return series.approximates(tanh).where(u.abs() < 0.25, exp_form.approximates(tanh))


def _kernel_silu_grad(p: Bounded) -> Bounded:
    """_triton_kernels._silu_grad: s (1 + p (1 - s)), s = 1 / (1 + exp(min(-p, 80)))."""
    assert bool((p.error < 5).all())
    # Where p is surely below -70, the kernel's s and sigmoid(p) both lie in [0, 2 e^-70] (whether or not
    # its clamp at 80 applies); elsewhere the clamp is not reached (p's error is below 5).
    deep = -p.value - p.error > 70
    p_safe = Bounded(torch.where(deep, 0.0, p.value), torch.where(deep, 0.0, p.error))
    one = Bounded.literal(1.0, p.value)
    s = (one / (one + (-p_safe).exp())).approximates(torch.sigmoid(p_safe.value))
    s = Bounded(torch.sigmoid(p.value), torch.where(deep, 2 * math.exp(-70.0), s.error))
    return s * (one + p * (one - s))


class _GramBetaGradientModel:
    """The kernel's dL/dbeta_weights for a gram layer on input u, per upstream (stacked) gradient."""

    def __init__(self, layer, u: torch.Tensor) -> None:
        basis = layer.basis
        d = self.degree = basis.degree
        coef = triton_basis._coefficients(basis, u.device).cpu()
        assert coef[1: d + 1].eq(1).all() and coef[d + 1: 2 * d + 2].eq(0).all()  # a_i = 1, g_i = 0: lin = t exactly
        self.layer, self.numel, self.factors = layer, u.numel(), basis.beta_factors
        t = _kernel_tanh(u.detach().double().cpu())
        beta = basis.beta_weights.detach().double().cpu()
        zero = Bounded.exact(torch.zeros_like(t.value))
        polys = [Bounded.exact(torch.ones_like(t.value)), t]
        self.slopes: Dict[int, Bounded] = {}
        self.q: Dict[Tuple[int, int], Bounded] = {}
        for i in range(2, d + 1):
            c = Bounded.literal(self.factors[i - 2], t.value) * Bounded.exact(beta[i - 1].expand_as(t.value))
            polys.append(t * polys[i - 1] - c * polys[i - 2])
            self.slopes[i] = _kernel_silu_grad(polys[i])
            for j in range(2, i + 1):
                self.q[i, j] = -polys[i - 2] if i == j else (
                    t * self.q[i - 1, j] - c * (self.q[i - 2, j] if i - 2 >= j else zero))
        self.columns = range(2, d + 1)

    def _slot(self, grad_stacked: torch.Tensor, i: int) -> torch.Tensor:
        """Function i's gradient (the stack holds the base branch first), shaped like u."""
        g = self.layer.groups
        stacked = grad_stacked.double().cpu().unflatten(1, (g, self.degree + 2, -1))
        return stacked[:, :, 1 + i].flatten(1, 2)

    def aligned_gradient(self, j: int, generator: torch.Generator) -> torch.Tensor:
        """A float32 stacked gradient under which column j's terms w_i q_ij all have one sign: its sum is
        then as large as its terms allow, so the bound is a small fraction of it and a defect shows."""
        n, c, *spatial = self.slopes[2].value.shape
        g = self.layer.groups
        grad = torch.rand((n, g * (self.degree + 2), c // g, *spatial), generator=generator) + 0.5
        for i in range(j, self.degree + 1):
            sign = torch.sign(self.slopes[i].value * self.q[i, j].value).unflatten(1, (g, -1))
            grad.unflatten(1, (g, self.degree + 2))[:, :, 1 + i] *= sign.float()
        return grad.flatten(1, 2)

    def beta_gradient(self, grad_stacked: torch.Tensor) -> Bounded:
        """dL/dbeta_weights (degree + 1 entries; w_0 and w_D unused): exact value and the float32 bound."""
        block = triton_basis._BLOCK_PARAM_GRADS
        programs = -(-self.numel // block)
        value = torch.zeros(self.degree + 1, dtype=torch.float64)
        error = torch.zeros_like(value)
        for j in self.columns:
            acc = Bounded.exact(torch.zeros_like(self.slopes[2].value))
            for i in range(j, self.degree + 1):
                acc = acc + Bounded.exact(self._slot(grad_stacked, i)) * self.slopes[i] * self.q[i, j]
            total = sum_bound(acc, range(acc.value.dim()), depth=(block - 1) + (programs - 1))
            grad = total * Bounded.literal(self.factors[j - 2], total.value)
            value[j - 1], error[j - 1] = grad.value, grad.error
        return Bounded(value, error)

    def magnitude(self, grad_stacked: torch.Tensor) -> torch.Tensor:
        """sum |dL/dbeta terms| for a nonnegative stacked gradient: how far an error of the upstream
        gradient of that size can move dL/dbeta (the map is linear in it)."""
        out = torch.zeros(self.degree + 1, dtype=torch.float64)
        for j in self.columns:
            out[j - 1] = abs(self.factors[j - 2]) * sum(
                (self._slot(grad_stacked, i) * (self.slopes[i].value * self.q[i, j].value).abs()).sum()
                for i in range(j, self.degree + 1))
        return out


def _gram_layer(generator: torch.Generator) -> KANConv2d:
    layer = KANConv2d(4, 4, 3, padding=1, basis="gram", degree=5)
    with torch.no_grad():  # the initial spread of beta_weights (GramBasis.reset_parameters), from this stream
        layer.basis.beta_weights.copy_(torch.randn(6, generator=generator) / 18.0)
    return layer.to(DEVICE)


def _float64_beta_gradient(layer, u: torch.Tensor, grad_stacked: torch.Tensor) -> torch.Tensor:
    """float64 autograd of the torch path's stacked basis, from the same float32 inputs."""
    layer64 = copy.deepcopy(layer).double().cpu()
    u64 = u.detach().double().cpu()
    stacked = layer64.stacked_basis(u64, u64, None)
    (grad,) = torch.autograd.grad(stacked, layer64.basis.beta_weights, grad_stacked.double().cpu())
    return grad


def test_beta_gradient_kernel_within_float32_error_bound():
    """The kernel's dL/dbeta (block sums of float32 terms) is within the error model's bound of the exact
    value for its own float32 inputs; under an aligned gradient the bound is < 1e-4 of the value."""
    gen = generator(19)
    layer = _gram_layer(gen)
    u = torch.randn(2, 4, 13, 11, generator=gen)  # 1144 elements: 5 blocks of 256, the last ragged
    model = _GramBetaGradientModel(layer, u)
    for j in model.columns:
        grad_stacked = model.aligned_gradient(j, gen)
        _, _, (kernel,) = triton_basis.basis_backward(layer, u.to(DEVICE), u.to(DEVICE), None,
                                                      [layer.basis.beta_weights], grad_stacked.to(DEVICE), True)
        expected = model.beta_gradient(grad_stacked)
        # the model's values are the layer's math: float64 autograd agrees far inside the float32 bound
        assert ((expected.value - _float64_beta_gradient(layer, u, grad_stacked)).abs()
                <= 1e-6 * expected.error).all()
        err = (kernel.double().cpu() - expected.value).abs()
        assert (err <= expected.error).all(), (j, err, expected.error)
        assert expected.error[j - 1] < 1e-4 * expected.value[j - 1].abs(), (j, expected.error, expected.value)


def test_beta_gradient_of_the_layer_against_float64(monkeypatch):
    """Through the layer's Triton node (conv backward, kernel, factors) against float64 autograd of the
    torch path: within the kernel's bound plus what the float32 conv backward can move it by."""
    if DEVICE == "cuda":  # direct or GEMM convolution, so that conv_input_grad_bound holds (not Winograd, FFT)
        monkeypatch.setattr(torch.backends.cudnn, "enabled", False)
    gen = generator(20)
    layer = _gram_layer(gen)
    u = torch.randn(2, 4, 13, 11, generator=gen).to(DEVICE)
    seen = {}
    backward = triton_basis.basis_backward

    def spy(*args):
        seen["grad_stacked"] = args[5].detach().clone()
        return backward(*args)

    monkeypatch.setattr(triton_basis, "basis_backward", spy)
    grads = {}
    for dtype in (torch.float32, torch.float64):  # float64 takes the torch path
        net = copy.deepcopy(layer).to(dtype)
        uu = u.to(dtype).requires_grad_(True)
        y = net.expand_conv(uu, uu)  # conv of the stacked basis: the node under test, without norm or activation
        g = torch.randn(y.shape, generator=generator(21)).to(DEVICE, dtype)
        y.backward(g)
        grads[dtype] = net.basis.beta_weights.grad.double().cpu()
    model = _GramBetaGradientModel(layer, u)
    kernel_part = model.beta_gradient(seen["grad_stacked"]).error
    upstream = conv_input_grad_bound(g, layer.weight.detach(), seen["grad_stacked"].shape, layer.stride,
                                     layer.numeric_padding, layer.dilation, layer.groups)
    bound = kernel_part + model.magnitude(upstream.cpu())
    err = (grads[torch.float32] - grads[torch.float64]).abs()
    assert (err <= bound).all(), (err, bound)
    assert (bound[1:-1] < 0.1 * grads[torch.float64][1:-1].abs()).all(), bound  # informative: a wrong term shows


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
