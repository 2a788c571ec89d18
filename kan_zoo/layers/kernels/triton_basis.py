"""The optional Triton path: the basis expansion of a KAN layer as one fused kernel forward and one
backward, on CUDA, for every separable basis (all but wavelet).

Why: on a GPU the convolution is cuDNN-fast and the basis expansion around it is memory-bound
elementwise work; op by op, it reads and writes a tensor the size of the input several times per
degree. The kernels (kan_zoo.layers.kernels._triton_kernels) read the input once and write each function
straight into the stacked layout, and read the stacked gradient once to write dL/du.

It also runs under autocast: the stacked tensor is written in the autocast dtype (what the conv
would cast it to anyway), computed in float32 registers, so mixed-precision training keeps half the
bytes and takes the fused path too. Everything it does not cover (CPU, float64, wavelet, torch.compile
tracing, create_graph) falls back to the torch path of kan_zoo.layers.kernels.fused, which stays the
reference: tests compare the two.

    KAN_ZOO_TRITON=0 in the environment, or set_triton_enabled(False), switches the path off (.switches).

The bspline and relu kernels have been checked only under Triton's interpreter so far, not on a GPU:
on CUDA they run only with KAN_ZOO_TRITON=all (the interpreter, for tests, runs them always).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..bases.bernstein import BernsteinBasis
from ..bases.bspline import BSplineBasis
from ..bases.gram import GramBasis
from ..bases.rbf import RBFBasis
from ..bases.recurrence import ThreeTermRecurrenceBasis
from ..bases.relu import ReLUBasis
from .fused import _differentiable_backward
from .switches import TRITON

__all__ = ["triton_applies", "triton_available", "expand_conv", "stacked_basis", "basis_backward"]

_RELU_FAMILY = 4  # its own kernels (per-channel phases)
_BLOCK = 1024
_BLOCK_PARAM_GRADS = 256  # the gram backward keeps a (block, degree) tile of derivatives per program
_COEFFICIENTS: Dict[Tuple, torch.Tensor] = {}  # constant coefficient tables per (basis spec, device)
# The kernels' FAMILY code and input map (PREPARE: 0 none, 1 tanh, 2 sigmoid) per supported basis class.
_FAMILIES = ((GramBasis, 0, 1), (ThreeTermRecurrenceBasis, 0, 1), (BernsteinBasis, 1, 2), (RBFBasis, 2, 0),
             (BSplineBasis, 3, 0), (ReLUBasis, _RELU_FAMILY, 0))
_NOT_YET_ON_DEVICE = (3, _RELU_FAMILY)  # families not yet run on a GPU: CUDA only with KAN_ZOO_TRITON=all


def _family(basis: nn.Module) -> Optional[Tuple[int, int]]:
    for cls, family, prepare in _FAMILIES:
        if isinstance(basis, cls):
            return family, prepare
    return None


def _interpreting() -> bool:
    """Triton's CPU interpreter (TRITON_INTERPRET=1): the kernels then run on CPU tensors (tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_TRITON_IMPORTABLE: Optional[bool] = None


def triton_applies(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    """Whether ``layer.expand_conv(x, u)`` can take the Triton path for these inputs."""
    global _TRITON_IMPORTABLE
    basis = layer.basis
    family = _family(basis)
    if not TRITON.enabled or torch.compiler.is_compiling() or torch.jit.is_tracing() or family is None:
        return False
    if u.is_cuda:
        if family[0] in _NOT_YET_ON_DEVICE and os.environ.get("KAN_ZOO_TRITON") != "all":
            return False
        if not _capable(u.device, _compute_dtype(u)):
            return False
    elif not (_interpreting() and u.device.type == "cpu"):
        return False
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not u.is_contiguous():
        return False
    if x is not None and (_base_code(basis) is None or (x is not u and not _same_layout(x, u))):
        return False
    if layer.numeric_padding is None:
        return False
    if _TRITON_IMPORTABLE is None:
        _TRITON_IMPORTABLE = triton_available()
    return _TRITON_IMPORTABLE


_CAPABLE: Dict[Tuple, bool] = {}


def _capable(device: torch.device, dtype: torch.dtype) -> bool:
    """Triton needs compute capability 7.0 (as torch.compile's inductor checks) and 8.0 for bfloat16."""
    key = (device.index, dtype)
    if key not in _CAPABLE:
        capability = torch.cuda.get_device_capability(device)
        _CAPABLE[key] = capability >= ((8, 0) if dtype == torch.bfloat16 else (7, 0))
    return _CAPABLE[key]


def _same_layout(x: torch.Tensor, u: torch.Tensor) -> bool:
    return x.shape == u.shape and x.dtype == u.dtype and x.device == u.device and x.is_contiguous()


def _base_code(basis: nn.Module) -> Optional[int]:
    """The kernels' code for function 0 of the stack: 1 SiLU(x), 2 x, 3 GELU(x); None for others."""
    return {"silu": 1, "identity": 2, "gelu": 3}.get(basis.base_activation)


def _coefficients(basis: nn.Module, device: torch.device) -> torch.Tensor:
    """The float32 table the kernels read for this basis, on device.

    Recurrence: rows (a_i, g_i, c_i), i = 0..degree, of P_i = (a_i t + g_i) P_{i-1} - c_i P_{i-2}, flat;
    for gram the c row holds the parameter-free factors, which the kernels multiply by beta_weights
    on the device. Bernstein: C(D, k). RBF: the centres, then the inverse width; B-spline: the knots
    (buffers that grid refits move, so read each call)."""
    d = basis.degree
    if isinstance(basis, RBFBasis):
        return torch.cat([basis.grid.float(), basis.inv_width.float().reshape(1)])
    if isinstance(basis, BSplineBasis):
        return basis.grid.float()  # the knots (a no-op where they are float32 already)
    if isinstance(basis, BernsteinBasis):
        coeffs = [float(math.comb(d, k)) for k in range(d + 1)]
        key: Tuple = ("bernstein", d, device)
    elif isinstance(basis, GramBasis):
        factors = [0.0, 0.0] + list(basis.beta_factors[: max(d - 1, 0)])
        coeffs = [0.0] + [1.0] * d + [0.0] * (d + 1) + factors[: d + 1]
        key = ("gram", d, device)
    else:
        rows = [(0.0, 0.0, 0.0)] + list(basis.coefficients())
        coeffs = [value for row in zip(*rows) for value in row]  # a row, g row, c row
        key = ("recurrence", tuple(coeffs), device)
    if key not in _COEFFICIENTS:
        _COEFFICIENTS[key] = torch.tensor(coeffs, dtype=torch.float64).float().to(device)
    return _COEFFICIENTS[key]


def _pow2_above(n: int) -> int:
    """The smallest power of 2 (at least 2) above n: a tile width for n + 1 columns."""
    return max(2, 1 << n.bit_length())


def _layout_args(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor]) -> dict:
    """What every kernel needs to know of the stacked layout, the base branch and the dropout mask."""
    return dict(group_elems=u[0].numel() // layer.groups, spatial=math.prod(u.shape[2:]),
                NFUNC=layer.basis.num_functions, BASE=_base_code(layer.basis) if x is not None else 0,
                FIRST=int(x is not None), HAS_MASK=mask is not None)


def _launch_args(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor]) -> dict:
    basis = layer.basis
    family, prepare = _family(basis)
    clamp = getattr(basis, "tanh_clamp", None)
    d, is_bspline = basis.degree, isinstance(basis, BSplineBasis)
    return dict(
        _layout_args(layer, x, u, mask), numel=u.numel(), edge=float(clamp or 0.0), FAMILY=family, PREPARE=prepare,
        SAME_INPUT=x is None or x is u, SILU=isinstance(basis, GramBasis), LEARNED_C=isinstance(basis, GramBasis),
        CLAMP=clamp is not None,
        # B-spline only: its order and the width of de Boor's triangle tile
        DEGREE=d if is_bspline else 0, COLS=_pow2_above(d) if is_bspline else 2,
    )


def stacked_basis(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor],
                  params: List[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``layer.stacked_basis(x, u, mask)`` by one kernel, stored as ``dtype``."""
    from ._triton_kernels import expand_forward_kernel

    g = layer.groups
    num = int(x is not None) + layer.basis.num_functions
    out = torch.empty((u.shape[0], g * num * (u.shape[1] // g)) + u.shape[2:], dtype=dtype, device=u.device)
    if isinstance(layer.basis, ReLUBasis):
        _relu_forward(layer, x, u, mask, params, out)
        return out
    coef = _coefficients(layer.basis, u.device)
    grid = (max(1, -(-u.numel() // _BLOCK)),)
    expand_forward_kernel[grid](x if x is not None else u, u, mask if mask is not None else u, coef,
                                params[0].detach() if isinstance(layer.basis, GramBasis) else coef, out,
                                BLOCK=_BLOCK, **_launch_args(layer, x, u, mask))
    return out


def basis_backward(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor],
                   params: List[torch.Tensor], grad_stacked: torch.Tensor, need_params: bool
                   ) -> Tuple[Optional[torch.Tensor], torch.Tensor, List[Optional[torch.Tensor]]]:
    """(dL/dx or None where x is u or absent, dL/du, [dL/dparam for each basis parameter])
    given dL/d(stacked basis)."""
    from ._triton_kernels import expand_backward_kernel

    basis = layer.basis
    if isinstance(basis, ReLUBasis):
        return _relu_backward(layer, x, u, mask, params, grad_stacked, need_params)
    d = basis.degree
    param_grads = need_params and isinstance(basis, GramBasis) and d >= 2
    block = _BLOCK_PARAM_GRADS if param_grads else _BLOCK
    cols = _pow2_above(d) if param_grads else 2
    programs = max(1, -(-u.numel() // block))
    partial = torch.empty((programs, cols) if param_grads else (1,), dtype=torch.float32, device=u.device)
    separate_x = x is not None and x is not u
    grad_u = torch.empty_like(u)
    grad_x = torch.empty_like(x) if separate_x else None
    coef = _coefficients(basis, u.device)
    expand_backward_kernel[(programs,)](
        x if x is not None else u, u, mask if mask is not None else u, coef,
        params[0].detach() if isinstance(basis, GramBasis) else coef, grad_stacked.contiguous(),
        grad_x if separate_x else grad_u, grad_u, partial,
        PARAM_GRADS=param_grads, PARAM_COLS=cols, BLOCK=block, **_launch_args(layer, x, u, mask),
    )
    grads: List[Optional[torch.Tensor]] = [None] * len(params)
    if isinstance(basis, GramBasis) and need_params:
        grad_w = torch.zeros_like(params[0])
        if param_grads:  # dL/dw_{i-1} = factor_{i-2} dL/dc_i
            factors = coef[2 * (d + 1) + 2:]
            grad_w[1:d] = (partial.sum(0)[2: d + 1] * factors).to(grad_w.dtype)
        grads[0] = grad_w
    return grad_x, grad_u, grads


def _relu_grid(u: torch.Tensor) -> Tuple[Tuple[int, int], int]:
    """((rows, spatial blocks), block) for the ReLU kernels: one program per (sample, channel) row chunk."""
    spatial = math.prod(u.shape[2:])
    block = min(1024, max(16, 1 << (spatial - 1).bit_length()))
    return (u.shape[0] * u.shape[1], -(-spatial // block)), block


def _relu_forward(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor],
                  params: List[torch.Tensor], out: torch.Tensor) -> None:
    from ._triton_relu_kernels import relu_forward_kernel

    low, high = (p.detach() for p in params)
    grid, block = _relu_grid(u)
    relu_forward_kernel[grid](u, mask if mask is not None else u, low, high, layer.basis.scale, out,
                              BLOCK=block, channels=u.shape[1], **_layout_args(layer, x, u, mask))


def _relu_backward(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor],
                   params: List[torch.Tensor], grad_stacked: torch.Tensor, need_params: bool
                   ) -> Tuple[Optional[torch.Tensor], torch.Tensor, List[Optional[torch.Tensor]]]:
    from ._triton_relu_kernels import relu_backward_kernel

    low, high = (p.detach() for p in params)
    grid, block = _relu_grid(u)
    nfunc = layer.basis.num_functions
    partial_shape = (u.shape[0], u.shape[1], grid[1], nfunc) if need_params else (1,)
    partial_low = torch.empty(partial_shape, dtype=torch.float32, device=u.device)
    partial_high = torch.empty_like(partial_low)
    grad_u = torch.empty_like(u)
    relu_backward_kernel[grid](u, mask if mask is not None else u, low, high, layer.basis.scale,
                               grad_stacked.contiguous(), grad_u, partial_low, partial_high,
                               PARAM_GRADS=need_params, BLOCK=block, channels=u.shape[1],
                               **_layout_args(layer, x, u, mask))
    grads: List[Optional[torch.Tensor]] = [None, None]
    if need_params:  # one value per (channel, function): sum over samples and spatial blocks
        grads = [partial.sum((0, 2)).to(p.dtype) for partial, p in zip((partial_low, partial_high), params)]
    return None, grad_u, grads


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    device = u.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else u.dtype


def _expand_and_convolve(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor],
                         weight: torch.Tensor, params: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(conv output, stacked basis): the stack in the compute dtype, convolved with the weight cast to it."""
    dtype = _compute_dtype(u)
    stacked = stacked_basis(layer, x, u, mask, params, dtype)
    with torch.autocast(u.device.type, enabled=False):
        return layer._conv(stacked, weight.to(dtype), layer.groups), stacked


class TritonExpandConvFunction(torch.autograd.Function):
    """y = conv(stacked basis of (x, u), weight) with the basis by the Triton kernels; like
    kan_zoo.layers.kernels.fused.ExpandConvFunction (same inputs, whose double backward it shares), it keeps its
    inputs and (unless memory-efficient) the stack.
    x is the base branch's input: None (no base in the stack), u itself, or another tensor (rbf)."""

    @staticmethod
    def forward(ctx, layer, keep_basis: bool, x, u, mask, weight, *params):  # type: ignore[override]
        y, stacked = _expand_and_convolve(layer, x, u, mask, weight, list(params))
        ctx.layer, ctx.dtype, ctx.x_is_u = layer, stacked.dtype, x is u
        ctx.param_names = [name for name, _ in layer.basis.named_parameters()]
        ctx.save_for_backward(None if ctx.x_is_u else x, u, mask, weight, stacked if keep_basis else None, *params)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x, u, mask, weight, stacked, *params = ctx.saved_tensors
        x = u if ctx.x_is_u else x
        layer, dtype = ctx.layer, ctx.dtype
        if torch.is_grad_enabled():  # create_graph=True: replay through differentiable torch ops
            return _differentiable_backward(ctx, layer, x, u, mask, weight, params, grad_y)
        need_x, need_u, _, need_w = ctx.needs_input_grad[2:6]
        need_params = any(ctx.needs_input_grad[6:])
        need_basis = need_x or need_u or need_params
        if stacked is None:
            stacked = stacked_basis(layer, x, u, mask, params, dtype)
        grad_stacked, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_y.to(dtype), stacked, weight.to(dtype), None, layer.stride, layer.numeric_padding, layer.dilation,
            False, [0] * layer.ndim, layer.groups, [need_basis, need_w, False],
        )
        del stacked
        grad_x, grad_u, grad_params = None, None, [None] * len(params)
        if need_basis:
            grad_x, grad_u, grad_params = basis_backward(layer, x, u, mask, params, grad_stacked, need_params)
        if ctx.x_is_u:
            grad_x, grad_u = grad_u, None  # x is u: autograd sums both slots, so give it once
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return (None, None, grad_x if need_x else None, grad_u if need_u else None, None, grad_w, *grad_params)


def expand_conv(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor],
                params: List[torch.Tensor], needs_grad: bool) -> torch.Tensor:
    """``layer.expand_conv`` through the Triton kernels (check :func:`triton_applies` first)."""
    if not needs_grad:
        return _expand_and_convolve(layer, x, u, mask, layer.weight, params)[0]
    return TritonExpandConvFunction.apply(layer, not layer.memory_efficient, x, u, mask, layer.weight, *params)
