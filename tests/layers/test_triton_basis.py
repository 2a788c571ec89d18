"""The Triton path (kan_zoo.layers.kernels.triton_basis) against float64 and the torch path it replaces.

On a CUDA machine the kernels compile and run on the GPU; elsewhere (CI) they run on CPU tensors
under Triton's interpreter (TRITON_INTERPRET=1, set for this module only), the same kernel code.

The kernels compute in float32 only. Their results are checked against float64 autograd of the torch
path from the same float32 inputs, within bounds of a float32 error model (triton_kernel_model,
tests/error_model.py) that follows the kernels operation by operation, so the tolerances hold on any
machine and for any seed (KAN_ZOO_TEST_SEED), not only where they were measured.
"""
import copy
import os
from typing import Dict, List, Optional, Tuple

import pytest
import torch

pytest.importorskip("triton")

from kan_zoo.layers import (  # noqa: E402
    BottleneckKANConv2d, KANConv1d, KANConv2d, KANConv3d, set_memory_efficient, set_triton_enabled,
)
from kan_zoo.layers.kernels import triton_basis  # noqa: E402
from kan_zoo.layers.bases.gram import GramBasis  # noqa: E402
from kan_zoo.layers.bases.relu import ReLUBasis  # noqa: E402
from error_model import (  # noqa: E402
    U64, Bounded, conv_input_grad_bound, conv_output_bound, conv_weight_grad_bound,
)
from seeding import generator  # noqa: E402
from triton_kernel_model import KernelModel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True, scope="module")
def _triton_on_this_device():
    with pytest.MonkeyPatch.context() as mp:
        if DEVICE == "cpu":
            mp.setenv("TRITON_INTERPRET", "1")  # read when the kernels module is first imported, and per call
        mp.setenv("KAN_ZOO_TRITON", "all")  # on a GPU, also the kernels not yet checked there
        # Direct or GEMM convolutions in full float32, whose error the model bounds: cuDNN may take TF32,
        # Winograd or FFT algorithms.
        mp.setattr(torch.backends.cudnn, "enabled", False)
        if DEVICE == "cuda":  # bfloat16 GEMMs accumulate in float32 (as the autocast bounds assume)
            mp.setattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", False)
        previous = set_triton_enabled(True)
        yield
        set_triton_enabled(previous)


@pytest.fixture
def kernel_calls(monkeypatch) -> Dict[str, int]:
    """Counts launches of the forward and backward wrappers, to prove which path ran; the last call's
    arguments and result are in kernel_calls.last["forward" | "backward"]."""
    calls = _Calls(forward=0, backward=0)
    forward, backward = triton_basis.stacked_basis, triton_basis.basis_backward

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        out = forward(*args, **kwargs)
        calls.last["forward"] = (args, out)
        return out

    def counted_backward(*args, **kwargs):
        calls["backward"] += 1
        out = backward(*args, **kwargs)
        calls.last["backward"] = (args, out)
        return out

    monkeypatch.setattr(triton_basis, "stacked_basis", counted_forward)
    monkeypatch.setattr(triton_basis, "basis_backward", counted_backward)
    return calls


class _Calls(dict):
    """Launch counts (compared as a plain dict) plus the last launch's arguments and result."""

    def __init__(self, **counts: int) -> None:
        super().__init__(**counts)
        self.last: Dict[str, tuple] = {}


def _step(layer, x: torch.Tensor, triton: bool,
          seed: int = 1) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """(output, dL/dx, {param: grad}) of one forward+backward with the Triton path on or off."""
    previous = set_triton_enabled(triton)
    try:
        torch.manual_seed(seed)  # the same dropout mask on both paths
        xx = x.detach().clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = layer(xx)
        g = torch.randn(y.shape, generator=generator(3)).to(y.device, y.dtype)
        y.backward(g)
    finally:
        set_triton_enabled(previous)
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), xx.grad, grads


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    assert ((a.float() - b.float()).abs().max() / scale).item() < rtol


def _within(actual: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """Elementwise |actual - exact| <= bound (float64, on the CPU)."""
    err = (actual.detach().double().cpu() - exact.detach().double().cpu()).abs()
    bad = err > bound
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} of {err.numel()} beyond the bound; worst excess "
                                 f"{float((err - bound).max()):.3g}, err {float(err.max()):.3g}")


def _is_the_model(model: Bounded, exact: torch.Tensor, what: str) -> None:
    """The model's exact values are float64 autograd's (the layer's math): apart by float64 rounding only,
    2^-29 of float32's, so far inside the float32 error bound (and 2^-40 relative where that bound is 0)."""
    _within(model.value, exact, 1e-6 * model.error + 2.0 ** -40 * exact.detach().double().cpu().abs(), what)


# -- the node: conv(stacked basis of (x, u)) that the kernels compute, against float64 ------------------
def _node_inputs(layer, x: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """(x of the base branch or None, u, dropout mask): what the layer's forward passes to expand_conv
    (after its norm or bottleneck projection), and one dropout mask drawn for both runs."""
    seen = {}
    original = layer.expand_conv

    def capture(xb, u):
        seen.update(x=xb, u=u)
        return original(xb, u)

    layer.expand_conv = capture
    previous = set_triton_enabled(False)
    try:
        with torch.no_grad():
            layer(x)
    finally:
        set_triton_enabled(previous)
        del layer.expand_conv
    u = seen["u"].detach().clone()
    xb = None if seen["x"] is None else (u if seen["x"] is seen["u"] else seen["x"].detach().clone())
    return xb, u, layer.dropout_mask(u)


def _run_node(layer, xb, u, mask, g: Optional[torch.Tensor] = None, autocast: Optional[torch.dtype] = None
              ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
    """(y, gradients, dL/dy) of the node y = layer.expand_conv(x, u) with the dropout mask fixed, for the
    given dL/dy or a random one in y's dtype, optionally under autocast."""
    layer.dropout_mask = lambda _: mask
    try:
        uu = u.clone().requires_grad_(True)
        xx = None if xb is None else (uu if xb is u else xb.clone().requires_grad_(True))
        layer.zero_grad(set_to_none=True)
        with torch.autocast(u.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            y = layer.expand_conv(xx, uu)
        if g is None:
            g = torch.randn(y.shape, generator=generator(3)).to(y.device, y.dtype)
        y.backward(g.to(y.dtype))
    finally:
        del layer.dropout_mask
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    grads["u"] = uu.grad
    if xx is not None and xx is not uu:
        grads["x"] = xx.grad
    return y.detach(), grads, g


def _float64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().double()


# Unit roundoff of the autocast dtype: torch's casts of the weight and dL/dy and the convolutions' results
_ROUNDING = {None: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def check_node_against_float64(layer, x: torch.Tensor, kernel_calls, autocast: Optional[torch.dtype] = None
                               ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """The Triton node's forward, backward, stacked basis and kernel results within the error model's
    bounds of float64 autograd of the torch path, from the same float32 inputs (and dL/dy); returns the
    node's {y, weight, u, (x,) basis parameters: (bound, float64 value)}. Under autocast the kernels
    still compute in float32 but store the stack in the autocast dtype, and the convolutions take
    operands of that dtype: one more rounding of each (float32 accumulation)."""
    xb, u, mask = _node_inputs(layer, x)
    y, grads, g = _run_node(layer, xb, u, mask, autocast=autocast)
    assert kernel_calls == {"forward": 1, "backward": 1}
    (_, stacked), (args, (k_grad_x, k_grad_u, k_params)) = kernel_calls.last["forward"], kernel_calls.last["backward"]
    grad_stacked = args[5]
    rounding = _ROUNDING[autocast]

    layer64 = copy.deepcopy(layer).double()
    u64 = _float64(u)
    x64 = u64 if xb is u else _float64(xb)
    y64, grads64, _ = _run_node(layer64, x64, u64, _float64(mask), g=g.double())
    assert kernel_calls["forward"] == 1  # float64 took the torch path
    assert grads.keys() == grads64.keys()

    model = KernelModel(layer, xb, u, mask)
    # the forward kernel: each stacked function within its bound; the model is the float64 path's math
    stack = model.stack()
    leaves = [t.requires_grad_(True) for t in {id(v): v for v in (u64, x64) if v is not None}.values()]
    stack64 = layer64.stacked_basis(x64, u64, _float64(mask))
    _is_the_model(stack, stack64, "stacked basis (model)")
    # as stored: within one ulp (Triton's interpreter truncates to bfloat16, GPUs round to nearest)
    stack = Bounded(stack.value, stack.error + 2 * rounding * (stack.value.abs() + stack.error))
    _within(stacked, stack.value, stack.error, "stacked basis")
    # the backward kernel, on the stacked gradient it got
    grad_x, grad_u = model.backward(grad_stacked)
    trained = [(n, p) for n, p in layer64.basis.named_parameters() if p.requires_grad]
    exact = torch.autograd.grad(stack64, leaves + [p for _, p in trained], _float64(grad_stacked),
                                retain_graph=True, allow_unused=True)
    _is_the_model(grad_u, exact[0], "dL/du (model)")
    _within(k_grad_u, grad_u.value, grad_u.error, "dL/du kernel")
    if grad_x is not None:
        _is_the_model(grad_x, exact[1], "dL/dx (model)")
        _within(k_grad_x, grad_x.value, grad_x.error, "dL/dx kernel")
    params = _param_gradients(model, grad_stacked)
    assert params.keys() == {n for n, _ in trained}
    for i, (name, _) in enumerate(layer64.basis.named_parameters()):
        if name in params:
            grad64 = exact[len(leaves) + [n for n, _ in trained].index(name)]  # None: unused (gram below degree 2)
            _is_the_model(params[name], torch.zeros_like(params[name].value) if grad64 is None else grad64,
                          name + " (model)")
            _within(k_params[i], params[name].value, params[name].error, name + " kernel")

    # the node: the convolutions around the kernels, errors carried through them
    conv = (layer.stride, layer.numeric_padding, layer.dilation, layer.groups)
    upstream = conv_input_grad_bound(g, layer.weight, grad_stacked.shape, *conv, weight_rel=rounding, out_rel=rounding)
    reach = _reach(layer64, stack64, leaves, model, upstream)
    bounds = {"y": (conv_output_bound(stack, layer.weight, *conv, weight_rel=rounding, out_rel=rounding), y64),
              "weight": (conv_weight_grad_bound(g, stack, layer.weight.shape, *conv, out_rel=rounding),
                         grads64["weight"]),
              "u": (grad_u.error + reach["u"], grads64["u"])}
    if "x" in grads:
        bounds["x"] = (grad_x.error + reach["x"], grads64["x"])
    bounds.update({name: (params[name].error + reach[name], grads64["basis." + name]) for name in params})
    for name, (bound, exact64) in bounds.items():
        _within(y if name == "y" else grads[name if name in grads else "basis." + name], exact64, bound, name)
    return bounds


def _param_gradients(model: KernelModel, grad_stacked: torch.Tensor) -> Dict[str, Bounded]:
    basis = model.basis
    if isinstance(basis, GramBasis) and basis.beta_weights.requires_grad:
        return {"beta_weights": model.gram_beta_gradient(grad_stacked)}
    if isinstance(basis, ReLUBasis) and basis.phase_low.requires_grad:
        low, high = model.relu_phase_gradients(grad_stacked)
        return {"phase_low": low, "phase_high": high}
    return {}


def _reach(layer64, stack64: torch.Tensor, leaves: List[torch.Tensor], model: KernelModel,
           upstream: torch.Tensor) -> Dict[str, torch.Tensor]:
    """How far an error of the stacked gradient within ``upstream`` (elementwise, >= 0) can move each
    gradient the kernels compute from it: sum over slots |d slot / d input| * upstream (exact, float64)."""
    slots = model._slots()
    view = (stack64.shape[0], layer64.groups, slots, -1) + tuple(stack64.shape[2:])
    out = {"u": torch.zeros_like(leaves[0], dtype=torch.float64).cpu(), "x": 0.0}
    for f in range(slots):
        pick = torch.zeros_like(stack64).reshape(view)
        pick[:, :, f] = 1
        jac = torch.autograd.grad(stack64, leaves, pick.reshape(stack64.shape), retain_graph=True)
        part = model.slot(upstream, f).value
        out["u"] = out["u"] + jac[0].abs().cpu() * part
        if len(leaves) > 1:
            out["x"] = out["x"] + jac[1].abs().cpu() * part
    basis = model.basis
    if isinstance(basis, GramBasis):
        out["beta_weights"] = model.gram_beta_magnitude(upstream)
    if isinstance(basis, ReLUBasis) and basis.phase_low.requires_grad:  # dB/da <= 0 and dB/db >= 0 everywhere: the sums are of one sign
        low, high = torch.autograd.grad(stack64, [layer64.basis.phase_low, layer64.basis.phase_high],
                                        upstream.to(stack64.device), retain_graph=True)
        out["phase_low"], out["phase_high"] = low.abs().cpu(), high.abs().cpu()
    return out


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
    # degree 2 (d0, d1, d3 above): the checks' cost grows steeply with the degree (d4 took 26 s, d2 7 s)
    ("bspline-d2-wide-range", KANConv2d, dict(basis="bspline", degree=2, grid_range=(-2.0, 3.0)), (2, 4, 6, 6)),
    ("bottleneck-bspline", BottleneckKANConv2d, dict(basis="bspline"), (2, 16, 6, 6)),
    ("relu", KANConv2d, dict(basis="relu"), (2, 6, 7, 7)),
    ("relu-groups-dropout", KANConv2d, dict(basis="relu", groups=2, dropout=0.3, grid_size=3, degree=2), (2, 6, 5, 9)),
    ("relu-fixed-phases-1d", KANConv1d, dict(basis="relu", train_phases=False), (2, 4, 40)),
    ("gram-1d", KANConv1d, dict(basis="gram", degree=3), (2, 4, 17)),
    ("legendre-3d", KANConv3d, dict(basis="legendre"), (1, 4, 4, 5, 3)),
    ("bottleneck-gram", BottleneckKANConv2d, dict(basis="gram", degree=3), (2, 16, 6, 6)),
]


@pytest.mark.parametrize("name,cls,options,shape", CASES, ids=[c[0] for c in CASES])
def test_triton_node_against_float64(name, cls, options, shape, kernel_calls):
    layer = cls(shape[1], 6, 3, padding=1, **options).to(DEVICE)
    with torch.no_grad():  # beyond the initial spread, so that the beta gradients are not small
        for n, p in layer.named_parameters():
            if "beta" in n:
                p.copy_(torch.randn(p.shape, generator=generator(2)))
    x = (torch.randn(shape, generator=generator(1)) * 1.5).to(DEVICE)
    check_node_against_float64(layer, x, kernel_calls)


# -- gram's dL/dbeta: the kernel's per-block float32 sums, where the bound is tight -------------------
def _gram_layer(gen: torch.Generator) -> KANConv2d:
    layer = KANConv2d(4, 4, 3, padding=1, basis="gram", degree=5)
    with torch.no_grad():  # the initial spread of beta_weights (GramBasis.reset_parameters), from this stream
        layer.basis.beta_weights.copy_(torch.randn(6, generator=gen) / 18.0)
    return layer.to(DEVICE)


def _aligned_gradient(model: KernelModel, j: int, gen: torch.Generator) -> torch.Tensor:
    """A float32 stacked gradient under which column j's terms (dL/dbeta_{j-1}) all have one sign: the
    sum is then as large as its terms, the bound a small fraction of it, and a defect shows."""
    n, c, *spatial = model.t.value.shape
    g, slots = model.layer.groups, model._slots()
    grad = torch.rand((n, g, slots, c // g, *spatial), generator=gen) + 0.5
    for (i, col), (slope, q) in model.gram_beta_terms().items():
        if col == j:
            grad[:, :, 1 + i] *= torch.sign(slope.value * q.value).unflatten(1, (g, -1)).float()
    return grad.flatten(1, 3)


def test_beta_gradient_kernel_within_float32_error_bound():
    """The kernel's dL/dbeta (block sums of float32 terms) is within the error model's bound of the exact
    value for its own float32 inputs; under an aligned gradient the bound is < 1e-4 of the value, so
    dropping a block's partial, or a 1e-4 change of one term of the recurrence, fails this test."""
    gen = generator(19)
    layer = _gram_layer(gen)
    u = torch.randn(2, 4, 13, 11, generator=gen)  # 1144 elements: 5 blocks of 256, the last ragged
    model = KernelModel(layer, u, u, None)
    layer64 = copy.deepcopy(layer).double().cpu()
    u64 = u.double()
    stack64 = layer64.stacked_basis(u64, u64, None)
    for j in range(2, layer.basis.degree + 1):
        grad_stacked = _aligned_gradient(model, j, gen)
        _, _, (kernel,) = triton_basis.basis_backward(layer, u.to(DEVICE), u.to(DEVICE), None,
                                                      [layer.basis.beta_weights], grad_stacked.to(DEVICE), True)
        expected = model.gram_beta_gradient(grad_stacked)
        (exact,) = torch.autograd.grad(stack64, layer64.basis.beta_weights, grad_stacked.double(), retain_graph=True)
        _is_the_model(expected, exact, "dL/dbeta (model)")
        _within(kernel, expected.value, expected.error, f"dL/dbeta, gradient aligned for column {j}")
        assert expected.error[j - 1] < 1e-4 * expected.value[j - 1].abs(), (j, expected.error, expected.value)


def test_beta_gradient_of_the_node_against_float64(kernel_calls):
    """The whole node (conv, kernels, conv backward) for gram at degree 5 with beta at its initial spread,
    against float64: there the bound on dL/dbeta is under 1/10 of it, so a wrong term shows."""
    gen = generator(20)
    layer = _gram_layer(gen)
    bounds = check_node_against_float64(layer, torch.randn(2, 4, 13, 11, generator=gen).to(DEVICE), kernel_calls)
    bound, exact = bounds["beta_weights"]
    assert (bound[1:-1] < 0.1 * exact[1:-1].abs()).all(), (bound, exact)


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


def test_autocast_bf16_within_bfloat16_error_bounds(kernel_calls):
    """Under bfloat16 autocast: the stack stored in bfloat16, the convolutions on bfloat16 operands, the
    gradients in float32; against float64 within the float32 model plus bfloat16's roundings."""
    layer = KANConv2d(8, 8, 3, padding=1, basis="gram", degree=3).to(DEVICE)
    x = torch.randn(2, 8, 10, 10, generator=generator(8)).to(DEVICE)
    check_node_against_float64(layer, x, kernel_calls, autocast=torch.bfloat16)
    xx = x.clone().requires_grad_(True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = layer(xx)
    y.float().sum().backward()
    assert kernel_calls == {"forward": 2, "backward": 2}
    assert y.dtype == torch.bfloat16 and xx.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32


def test_double_backward_through_the_triton_node(kernel_calls):
    """create_graph=True (a gradient penalty) replays the node through the torch path's ops from what the
    Triton node saved: for a loss linear in the node's output (so that the forwards' own roundings do not
    enter), the penalty and its weight gradient are the torch path's, bit for bit."""
    layer = KANConv2d(4, 4, 3, padding=1, basis="legendre").to(DEVICE)
    x = torch.randn(2, 4, 6, 6, generator=generator(6)).to(DEVICE)
    r = torch.randn(2, 4, 6, 6, generator=generator(7)).to(DEVICE)
    penalties = []
    for triton in (True, False):
        previous = set_triton_enabled(triton)
        xx = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((layer.expand_conv(xx, xx) * r).sum(), xx, create_graph=True)
        penalty = gx.pow(2).sum()
        (gw,) = torch.autograd.grad(penalty, layer.weight)
        set_triton_enabled(previous)
        penalties.append((penalty.detach(), gw))
    assert kernel_calls == {"forward": 1, "backward": 0}  # the Triton forward; its backward replayed
    assert torch.equal(penalties[0][0], penalties[1][0]) and torch.equal(penalties[0][1], penalties[1][1])


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
        shift = torch.rand(knots.shape, generator=generator(4)).to(knots.device)
        knots.copy_(torch.sort(knots + 0.2 * shift * (knots[1] - knots[0]))[0])
    check_node_against_float64(layer, torch.randn(2, 4, 8, 8, generator=generator(5)).to(DEVICE), kernel_calls)


@pytest.mark.skipif(DEVICE != "cuda", reason="the CUDA gate")
def test_kernels_not_yet_run_on_a_gpu_need_opt_in(monkeypatch):
    layer = KANConv2d(4, 4, 3, padding=1, basis="bspline").cuda()
    x = torch.randn(1, 4, 5, 5, device="cuda")
    monkeypatch.delenv("KAN_ZOO_TRITON", raising=False)
    assert not triton_basis.triton_applies(layer, x, x, None)
    monkeypatch.setenv("KAN_ZOO_TRITON", "all")
    assert triton_basis.triton_applies(layer, x, x, None)


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
