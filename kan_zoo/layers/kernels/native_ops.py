"""The C basis kernels as torch.library custom ops, so that compiled graphs call them (one graph, no break).

Why: under torch.compile a grid basis's layer is one graph of plain ops, and inductor's code for the
basis is slower than the eager path with the C kernels (kan_resnet18_bspline trained at 0.77x eager
compiled). As custom ops the kernels sit inside the graph as opaque calls with their own backward; the
rest (base branch, stacking, convolution, norm) stays inductor's. Used only while compiling a graph
(exporters see the reference ops) on the CPU where the kernels can be built.

The ops return the functions as (N, F, C, *spatial), function-major, which the plain path unbinds.
Below them, the one Python call of each grid-basis C kernel, which the ops and the bases' eager fast
paths both use: they take the layers' stacked layout, (n, G, F, C / G, *spatial) with each (n, g, f)
block contiguous. (The wavelet node's chunk kernels have one caller: .fused_wavelet.)
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import native_kernels
from .switches import NATIVE_KERNELS

__all__ = ["bspline_basis", "rbf_basis", "relu_basis", "traced_kernel_applies", "bspline_expand_into", "bspline_grad",
           "rbf_expand_into", "rbf_grad", "relu_expand_into", "relu_grads"]


def traced_kernel_applies(basis, t: torch.Tensor) -> bool:
    """Whether a graph being compiled (not exported) should call ``basis``'s C kernels as a custom op: the
    kernels on and buildable, a CPU float32/float64 input (a fake tensor while tracing)."""
    return (basis.native_library is not None and torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and _kernels_available(basis.native_library, t.dtype))


@torch.compiler.assume_constant_result
def _kernels_available(library: str, dtype: torch.dtype) -> bool:
    """Evaluated, not traced, while compiling (building the library reads and writes files)."""
    return NATIVE_KERNELS.enabled and native_kernels.kernel(
        library, f"{library}_expand", dtype) is not None


def _layout(t: torch.Tensor, blocks: torch.Tensor) -> tuple:
    """n, groups and the elements of a group's input row, then the (n, g, f) block strides of ``blocks``."""
    return (t.shape[0], blocks.shape[1], math.prod(blocks.shape[3:]), *native_kernels.block_strides(blocks, 3))


def _call(library: str, direction: str, t: torch.Tensor, *args) -> None:
    """The C kernel <library>_<direction> for t's dtype on t (contiguous) and ``args``, on torch's threads."""
    native_kernels.call(native_kernels.kernel(library, f"{library}_{direction}", t.dtype), t.contiguous(), *args,
                        native_kernels.threads())


# -- the kernel calls: ``out`` / ``grad_out`` in the stacked layout (the callers check ``out``'s blocks)
def bspline_expand_into(t: torch.Tensor, out: torch.Tensor, knots: torch.Tensor, degree: int) -> None:
    """B_{f, degree}(t) into ``out`` by Cox-de Boor on ``knots`` rounded to t's dtype (csrc/bspline.c)."""
    array = knots.detach().to(t.dtype).to(torch.float64)
    _call("bspline", "expand", t, out, *_layout(t, out), array, len(array), degree)


def bspline_grad(t: torch.Tensor, grad_out: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    """dL/dt from dL/d(functions)."""
    grad_out = native_kernels.blocked(grad_out, 3)
    grad_t = torch.empty(t.shape, dtype=t.dtype)
    array = knots.detach().to(t.dtype).to(torch.float64)
    _call("bspline", "backward", t, grad_out, grad_t, *_layout(t, grad_out), array, len(array), degree)
    return grad_t


def _rbf_constants(t: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> tuple:
    return centres.detach().to(t.dtype), centres.shape[0], inv_width.detach().to(t.dtype).reshape(1)


def rbf_expand_into(t: torch.Tensor, out: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> None:
    """exp(-((t - mu_f) inv_width)^2) into ``out`` (csrc/rbf.c)."""
    _call("rbf", "expand", t, out, *_layout(t, out), *_rbf_constants(t, centres, inv_width))


def rbf_grad(t: torch.Tensor, grad_out: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor,
             functions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dL/dt from dL/d(functions), reading the kept Gaussians ``functions`` (same layout) where given."""
    grad_out = native_kernels.blocked(grad_out, 3)
    kept = grad_out if functions is None else native_kernels.blocked(functions, 3)  # grad_out: not read
    grad_t = torch.empty(t.shape, dtype=t.dtype)
    _call("rbf", "backward", t, grad_out, kept, grad_t, *_layout(t, grad_out), *native_kernels.block_strides(kept, 3),
          *_rbf_constants(t, centres, inv_width), int(functions is not None))
    return grad_t


def _relu_layout(t: torch.Tensor, blocks: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple:
    """n, groups, channels, positions, the block strides, the phases as (C, F) arrays, the function count."""
    return (t.shape[0], blocks.shape[1], t.shape[1], math.prod(t.shape[2:]), *native_kernels.block_strides(blocks, 3),
            low.detach().to(t.dtype).contiguous(), high.detach().to(t.dtype).contiguous(), low.shape[1])


def relu_expand_into(t: torch.Tensor, out: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                     scale: torch.Tensor) -> None:
    """((scale relu(t - a_cf)) relu(b_cf - t))^2 into ``out`` (csrc/relu.c)."""
    _call("relu", "expand", t, out, *_relu_layout(t, out, low, high), scale.detach().to(t.dtype).reshape(1))


def relu_grads(t: torch.Tensor, grad_out: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
               scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dt, dL/dphase_low, dL/dphase_high) from dL/d(functions); the phase gradients in the phases' dtype."""
    grad_out = native_kernels.blocked(grad_out, 3)
    grad_t = torch.empty(t.shape, dtype=t.dtype)
    # h Q and h P per (channel, function), one slice per thread, added up here in thread order
    sums = torch.zeros((native_kernels.threads(), 2) + tuple(low.shape), dtype=torch.float64)
    _call("relu", "backward", t, grad_out, grad_t, *_relu_layout(t, grad_out, low, high), sums)
    factor = 2.0 * float(scale.to(t.dtype)) ** 2
    grad_low, grad_high = sums.sum(0)
    return grad_t.mul_(factor), (grad_low * -factor).to(low.dtype), (grad_high * factor).to(high.dtype)


# -- the custom ops: functions as (N, F, C, *spatial), which is the stacked layout with one group
def _functions(t: torch.Tensor, functions: int) -> torch.Tensor:
    return t.new_empty((t.shape[0], functions) + tuple(t.shape[1:]))


def _one_group(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1)


@torch.library.custom_op("kan_zoo::bspline_basis", mutates_args=())
def bspline_basis(t: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    out = _functions(t, len(knots) - 1 - degree)
    bspline_expand_into(t, _one_group(out), knots, degree)
    return out


@bspline_basis.register_fake
def _(t: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    return _functions(t, knots.shape[0] - 1 - degree)


@torch.library.custom_op("kan_zoo::bspline_basis_backward", mutates_args=())
def bspline_basis_backward(t: torch.Tensor, grad: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    return bspline_grad(t, _one_group(grad), knots, degree)


@bspline_basis_backward.register_fake
def _(t: torch.Tensor, grad: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _bspline_setup(ctx, inputs, output) -> None:
    t, knots, degree = inputs
    ctx.save_for_backward(t, knots)
    ctx.degree = degree  # an int: not a tensor to save


def _bspline_backward(ctx, grad: torch.Tensor):
    t, knots = ctx.saved_tensors
    return bspline_basis_backward(t, grad, knots, ctx.degree), None, None


bspline_basis.register_autograd(_bspline_backward, setup_context=_bspline_setup)


@torch.library.custom_op("kan_zoo::rbf_basis", mutates_args=())
def rbf_basis(t: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> torch.Tensor:
    out = _functions(t, centres.shape[0])
    rbf_expand_into(t, _one_group(out), centres, inv_width)
    return out


@rbf_basis.register_fake
def _(t: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> torch.Tensor:
    return _functions(t, centres.shape[0])


@torch.library.custom_op("kan_zoo::rbf_basis_backward", mutates_args=())
def rbf_basis_backward(t: torch.Tensor, grad: torch.Tensor, centres: torch.Tensor,
                       inv_width: torch.Tensor) -> torch.Tensor:
    """Recomputes the Gaussians (the graph keeps its stacked copy, not the op's output)."""
    return rbf_grad(t, _one_group(grad), centres, inv_width)


@rbf_basis_backward.register_fake
def _(t: torch.Tensor, grad: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _rbf_backward(ctx, grad: torch.Tensor):
    t, centres, inv_width = ctx.saved_tensors
    return rbf_basis_backward(t, grad, centres, inv_width), None, None


rbf_basis.register_autograd(_rbf_backward, setup_context=_save_inputs)


@torch.library.custom_op("kan_zoo::relu_basis", mutates_args=())
def relu_basis(t: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out = _functions(t, low.shape[1])
    relu_expand_into(t, _one_group(out), low, high, scale)
    return out


@relu_basis.register_fake
def _(t: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _functions(t, low.shape[1])


@torch.library.custom_op("kan_zoo::relu_basis_backward", mutates_args=())
def relu_basis_backward(t: torch.Tensor, grad: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                        scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return relu_grads(t, _one_group(grad), low, high, scale)


@relu_basis_backward.register_fake
def _(t: torch.Tensor, grad: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor):
    return (torch.empty(t.shape, dtype=t.dtype, device=t.device), torch.empty_like(low), torch.empty_like(high))


def _relu_backward(ctx, grad: torch.Tensor):
    t, low, high, scale = ctx.saved_tensors
    return (*relu_basis_backward(t, grad, low, high, scale), None)


relu_basis.register_autograd(_relu_backward, setup_context=_save_inputs)
