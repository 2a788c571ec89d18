"""The optional Triton path: the basis expansion of gram, chebyshev, legendre and jacobi layers as
one fused kernel forward and one backward, on CUDA.

Why: on a GPU the convolution is cuDNN-fast and the basis expansion around it is memory-bound
elementwise work; op by op, it reads and writes a tensor the size of the input several times per
degree. The kernels (kan_zoo.layers._triton_kernels) read the input once and write each function
straight into the stacked layout, and read the stacked gradient once to write dL/du.

It also runs under autocast: the stacked tensor is written in the autocast dtype (what the conv
would cast it to anyway), computed in float32 registers, so mixed-precision training keeps half the
bytes and takes the fused path too. Everything it does not cover (CPU, float64, other bases, a base
branch on another input than the basis, torch.compile tracing, create_graph) falls back to the torch
path of kan_zoo.layers.fused, which stays the reference: tests compare the two.

    KAN_ZOO_TRITON=0 in the environment, or set_triton_enabled(False), switches the path off.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .bases.gram import GramBasis
from .bases.recurrence import ThreeTermRecurrenceBasis

__all__ = ["set_triton_enabled", "triton_enabled", "triton_applies", "triton_available", "expand_conv",
           "stacked_basis", "basis_backward"]

_ENABLED = os.environ.get("KAN_ZOO_TRITON", "1") != "0"
_BLOCK = 1024
_BLOCK_PARAM_GRADS = 256  # the gram backward keeps a (block, degree) tile of derivatives per program
_COEFFICIENTS: Dict[Tuple, torch.Tensor] = {}  # constant (3, degree + 1) tables per (basis spec, device)


def set_triton_enabled(enabled: bool = True) -> bool:
    """Turn the Triton basis kernels on or off for every layer; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def triton_enabled() -> bool:
    """Whether layers may use the Triton kernels (they still need CUDA, triton and a supported basis)."""
    return _ENABLED


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
    if not _ENABLED or torch.compiler.is_compiling() or not isinstance(basis, (GramBasis, ThreeTermRecurrenceBasis)):
        return False
    if not (u.is_cuda or (_interpreting() and u.device.type == "cpu")):
        return False
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not u.is_contiguous():
        return False
    if (x is not None and x is not u) or (x is not None and _base_code(basis) is None):
        return False
    if layer.numeric_padding is None:
        return False
    if _TRITON_IMPORTABLE is None:
        _TRITON_IMPORTABLE = triton_available()
    return _TRITON_IMPORTABLE


def _base_code(basis: nn.Module) -> Optional[int]:
    """The kernels' code for function 0 of the stack: 1 SiLU(u), 2 u; None for other activations."""
    return {"silu": 1, "identity": 2}.get(basis.base_activation)


def _coefficients(basis: nn.Module, params: List[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Rows (a_i, g_i, c_i), i = 0..degree, of P_i = (a_i t + g_i) P_{i-1} - c_i P_{i-2}, float32 on device.

    Gram's c_i = factor * beta_weights[i - 1] is built from ``params`` (the tensors autograd saw)
    with device ops, so no host-device copy happens per call."""
    d = basis.degree
    if isinstance(basis, GramBasis):
        key = ("gram", d, device)
        if key not in _COEFFICIENTS:
            table = torch.zeros(3, d + 1)
            table[0, 1:] = 1.0
            table[2, 2:] = torch.tensor(basis.beta_factors[: max(d - 1, 0)], dtype=torch.float64).float()
            _COEFFICIENTS[key] = table.to(device)
        table = _COEFFICIENTS[key]
        c = table[2, 2:] * params[0][1:d].detach().float()
        return torch.cat([table[:2].reshape(-1), table.new_zeros(2), c]) if d >= 2 else table.reshape(-1)
    coeffs = [(0.0, 0.0, 0.0)] + list(basis.coefficients())
    key = ("recurrence", tuple(coeffs), device)
    if key not in _COEFFICIENTS:
        _COEFFICIENTS[key] = torch.tensor(coeffs, dtype=torch.float64).T.float().contiguous().reshape(-1).to(device)
    return _COEFFICIENTS[key]


def _launch_args(layer: nn.Module, with_base: bool, u: torch.Tensor, mask: Optional[torch.Tensor]) -> dict:
    basis = layer.basis
    clamp = getattr(basis, "tanh_clamp", None)
    return dict(
        numel=u.numel(), group_elems=u[0].numel() // layer.groups, spatial=math.prod(u.shape[2:]),
        edge=float(clamp or 0.0), DEGREE=basis.degree,
        BASE=_base_code(basis) if with_base else 0, FIRST=int(with_base),
        SILU=isinstance(basis, GramBasis), CLAMP=clamp is not None, HAS_MASK=mask is not None,
    )


def stacked_basis(layer: nn.Module, with_base: bool, u: torch.Tensor, mask: Optional[torch.Tensor],
                  params: List[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``layer.stacked_basis(u if with_base else None, u, mask)`` by one kernel, stored as ``dtype``."""
    from ._triton_kernels import expand_forward_kernel

    g = layer.groups
    num = int(with_base) + layer.basis.num_functions
    out = torch.empty((u.shape[0], g * num * (u.shape[1] // g)) + u.shape[2:], dtype=dtype, device=u.device)
    coef = _coefficients(layer.basis, params, u.device)
    grid = (max(1, -(-u.numel() // _BLOCK)),)
    expand_forward_kernel[grid](u, mask if mask is not None else u, coef, out,
                                BLOCK=_BLOCK, **_launch_args(layer, with_base, u, mask))
    return out


def basis_backward(layer: nn.Module, with_base: bool, u: torch.Tensor, mask: Optional[torch.Tensor],
                   params: List[torch.Tensor], grad_stacked: torch.Tensor,
                   need_params: bool) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
    """(dL/du, [dL/dparam for each basis parameter]) given dL/d(stacked basis)."""
    from ._triton_kernels import expand_backward_kernel

    basis = layer.basis
    d = basis.degree
    param_grads = need_params and isinstance(basis, GramBasis) and d >= 2
    block = _BLOCK_PARAM_GRADS if param_grads else _BLOCK
    cols = max(2, 1 << d.bit_length()) if param_grads else 2  # a power of 2 above the degree
    programs = max(1, -(-u.numel() // block))
    partial = torch.empty((programs, cols) if param_grads else (1,), dtype=torch.float32, device=u.device)
    grad_u = torch.empty_like(u)
    coef = _coefficients(basis, params, u.device)
    expand_backward_kernel[(programs,)](
        u, mask if mask is not None else u, coef, grad_stacked.contiguous(), grad_u, partial,
        PARAM_GRADS=param_grads, PARAM_COLS=cols, BLOCK=block, **_launch_args(layer, with_base, u, mask),
    )
    grads: List[Optional[torch.Tensor]] = [None] * len(params)
    if isinstance(basis, GramBasis) and need_params:
        grad_w = torch.zeros_like(params[0])
        if param_grads:  # dL/dw_{i-1} = factor_{i-2} dL/dc_i
            factors = _COEFFICIENTS[("gram", d, u.device)][2, 2:]
            grad_w[1:d] = (partial.sum(0)[2: d + 1] * factors).to(grad_w.dtype)
        grads[0] = grad_w
    return grad_u, grads


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    device = u.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else u.dtype


class TritonExpandConvFunction(torch.autograd.Function):
    """y = conv(stacked basis of u, weight) with the basis by the Triton kernels; like
    kan_zoo.layers.fused.ExpandConvFunction, it keeps u and (unless memory-efficient) the stacked basis."""

    @staticmethod
    def forward(ctx, layer, keep_basis: bool, with_base: bool, u, mask, weight, *params):  # type: ignore[override]
        dtype = _compute_dtype(u)
        stacked = stacked_basis(layer, with_base, u, mask, list(params), dtype)
        with torch.autocast(u.device.type, enabled=False):
            y = layer._conv(stacked, weight.to(dtype), layer.groups)
        ctx.layer, ctx.with_base, ctx.dtype = layer, with_base, dtype
        ctx.save_for_backward(u, mask, weight, stacked if keep_basis else None, *params)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        u, mask, weight, stacked, *params = ctx.saved_tensors
        layer, dtype = ctx.layer, ctx.dtype
        need_u, _, need_w = ctx.needs_input_grad[3:6]
        need_params = any(ctx.needs_input_grad[6:])
        if torch.is_grad_enabled():  # create_graph=True: replay through differentiable torch ops
            return _differentiable_backward(ctx, u, mask, weight, params, grad_y)
        if stacked is None:
            stacked = stacked_basis(layer, ctx.with_base, u, mask, params, dtype)
        w = weight.to(dtype)
        grad_stacked, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_y.to(dtype), stacked, w, None, layer.stride, layer.numeric_padding, layer.dilation, False,
            [0] * layer.ndim, layer.groups, [need_u or need_params, need_w, False],
        )
        del stacked
        grad_u, grad_params = None, [None] * len(params)
        if need_u or need_params:
            grad_u, grad_params = basis_backward(layer, ctx.with_base, u, mask, params, grad_stacked, need_params)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return (None, None, None, grad_u if need_u else None, None, grad_w, *grad_params)


def _differentiable_backward(ctx, u, mask, weight, params, grad_y) -> tuple:
    from .fused import swap_parameters

    layer = ctx.layer
    names = [name for name, _ in layer.basis.named_parameters()]
    with torch.enable_grad(), swap_parameters(layer.basis, dict(zip(names, params))):
        x = u if ctx.with_base else None
        y = layer._conv(layer.stacked_basis(x, u, mask), weight, layer.groups)
        inputs = [u, weight, *params]
        needs = [ctx.needs_input_grad[3], ctx.needs_input_grad[5], *ctx.needs_input_grad[6:]]
        wrt = [t for t, need in zip(inputs, needs) if need]
        found = iter(torch.autograd.grad(y, wrt, grad_y, create_graph=True, allow_unused=True))
    grad_u, grad_w, *grad_params = [next(found) if need else None for need in needs]
    return (None, None, None, grad_u, None, grad_w, *grad_params)


def expand_conv(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``layer.expand_conv`` through the Triton kernels (check :func:`triton_applies` first)."""
    params = list(layer.basis.parameters())
    with_base = x is not None
    needs_grad = torch.is_grad_enabled() and (
        u.requires_grad or layer.weight.requires_grad or any(p.requires_grad for p in params)
    )
    if not needs_grad:
        dtype = _compute_dtype(u)
        stacked = stacked_basis(layer, with_base, u, mask, params, dtype)
        with torch.autocast(u.device.type, enabled=False):
            return layer._conv(stacked, layer.weight.to(dtype), layer.groups)
    return TritonExpandConvFunction.apply(layer, not layer.memory_efficient, with_base, u, mask, layer.weight, *params)
