"""The C basis kernels as torch.library custom ops, so that compiled graphs call them (one graph, no break).

Why: under torch.compile a grid basis's layer is one graph of plain ops, and inductor's code for the
basis is slower than the eager path with the C kernels (kan_resnet18_bspline trained at 0.77x eager
compiled). As custom ops the kernels sit inside the graph as opaque calls with their own backward; the
rest (base branch, stacking, convolution, norm) stays inductor's. Used only while compiling a graph
(exporters see the reference ops) on the CPU where the kernels can be built; the eager layers call the
kernels directly (kan_zoo.layers.bases).

The ops return the functions as (N, F, C, *spatial), function-major, which the plain path unbinds.
"""
from __future__ import annotations

import math

import torch

from . import native_kernels

__all__ = ["bspline_basis", "rbf_basis", "relu_basis", "traced_kernel_applies"]


def traced_kernel_applies(basis, t: torch.Tensor) -> bool:
    """Whether a graph being compiled (not exported) should call ``basis``'s C kernels as a custom op: the
    kernels on and buildable, a CPU float32/float64 input (a fake tensor while tracing)."""
    return (basis.native_library is not None and torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and _kernels_available(basis.native_library, t.dtype))


@torch.compiler.assume_constant_result
def _kernels_available(library: str, dtype: torch.dtype) -> bool:
    """Evaluated, not traced, while compiling (building the library reads and writes files)."""
    return native_kernels.native_kernels_enabled() and native_kernels.kernel(
        library, f"{library}_expand", dtype) is not None


def _functions_shape(t: torch.Tensor, functions: int) -> tuple:
    return (t.shape[0], functions) + tuple(t.shape[1:])


def _bspline_knots(knots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The knots rounded to the input's dtype, as the float64 array the kernels read (as the eager path)."""
    return knots.detach().to(dtype).to(torch.float64).contiguous()


@torch.library.custom_op("kan_zoo::bspline_basis", mutates_args=())
def bspline_basis(t: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    """B_{f, degree}(t) for every function f, as (N, F, C, *spatial) (csrc/bspline.c)."""
    out = t.new_empty(_functions_shape(t, len(knots) - 1 - degree))
    kernel = native_kernels.kernel("bspline", "bspline_expand", t.dtype)
    blocks = out.unsqueeze(1)  # (N, 1, F, C, *spatial): the kernel's (n, groups, functions) layout
    array = _bspline_knots(knots, t.dtype)
    native_kernels.call(kernel, t.contiguous(), blocks, t.shape[0], 1, math.prod(t.shape[1:]),
                        *native_kernels.block_strides(blocks, 3), array, len(array), degree, native_kernels.threads())
    return out


@bspline_basis.register_fake
def _(t: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    return t.new_empty(_functions_shape(t, knots.shape[0] - 1 - degree))


@torch.library.custom_op("kan_zoo::bspline_basis_backward", mutates_args=())
def bspline_basis_backward(t: torch.Tensor, grad: torch.Tensor, knots: torch.Tensor, degree: int) -> torch.Tensor:
    """dL/dt from dL/d(functions) (N, F, C, *spatial)."""
    grad_t = torch.empty(t.shape, dtype=t.dtype)
    blocks = grad.contiguous().unsqueeze(1)
    array = _bspline_knots(knots, t.dtype)
    kernel = native_kernels.kernel("bspline", "bspline_backward", t.dtype)
    native_kernels.call(kernel, t.contiguous(), blocks, grad_t, t.shape[0], 1, math.prod(t.shape[1:]),
                        *native_kernels.block_strides(blocks, 3), array, len(array), degree, native_kernels.threads())
    return grad_t


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


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """(N, F, C, *spatial) as the kernels' (n, groups = 1, functions, ...) layout, contiguous."""
    return x.contiguous().unsqueeze(1)


@torch.library.custom_op("kan_zoo::rbf_basis", mutates_args=())
def rbf_basis(t: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> torch.Tensor:
    """exp(-((t - mu_f) inv_width)^2) for every centre f, as (N, F, C, *spatial) (csrc/rbf.c)."""
    out = t.new_empty(_functions_shape(t, centres.shape[0]))
    blocks = out.unsqueeze(1)
    native_kernels.call(native_kernels.kernel("rbf", "rbf_expand", t.dtype), t.contiguous(), blocks, t.shape[0], 1,
                        math.prod(t.shape[1:]), *native_kernels.block_strides(blocks, 3), *_rbf_constants(t, centres,
                        inv_width), native_kernels.threads())
    return out


@rbf_basis.register_fake
def _(t: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> torch.Tensor:
    return t.new_empty(_functions_shape(t, centres.shape[0]))


def _rbf_constants(t: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> tuple:
    return (centres.detach().to(t.dtype).contiguous(), centres.shape[0],
            inv_width.detach().to(t.dtype).reshape(1).contiguous())


@torch.library.custom_op("kan_zoo::rbf_basis_backward", mutates_args=())
def rbf_basis_backward(t: torch.Tensor, grad: torch.Tensor, centres: torch.Tensor,
                       inv_width: torch.Tensor) -> torch.Tensor:
    """dL/dt from dL/d(functions), recomputing the Gaussians (the graph keeps its stacked copy, not these)."""
    grad_t = torch.empty(t.shape, dtype=t.dtype)
    blocks = _blocks(grad)
    strides = native_kernels.block_strides(blocks, 3)
    native_kernels.call(native_kernels.kernel("rbf", "rbf_backward", t.dtype), t.contiguous(), blocks, blocks, grad_t,
                        t.shape[0], 1, math.prod(t.shape[1:]), *strides, *strides,
                        *_rbf_constants(t, centres, inv_width), 0, native_kernels.threads())
    return grad_t


@rbf_basis_backward.register_fake
def _(t: torch.Tensor, grad: torch.Tensor, centres: torch.Tensor, inv_width: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _rbf_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _rbf_backward(ctx, grad: torch.Tensor):
    t, centres, inv_width = ctx.saved_tensors
    return rbf_basis_backward(t, grad, centres, inv_width), None, None


rbf_basis.register_autograd(_rbf_backward, setup_context=_rbf_setup)


def _relu_layout(t: torch.Tensor, blocks: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple:
    """n, groups, channels, positions, the block strides, the phases as (C, F) arrays, the function count."""
    return (t.shape[0], 1, t.shape[1], math.prod(t.shape[2:]), *native_kernels.block_strides(blocks, 3),
            low.detach().to(t.dtype).contiguous(), high.detach().to(t.dtype).contiguous(), low.shape[1])


@torch.library.custom_op("kan_zoo::relu_basis", mutates_args=())
def relu_basis(t: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """((scale relu(t - a_cf)) relu(b_cf - t))^2 for every function f, as (N, F, C, *spatial) (csrc/relu.c)."""
    out = t.new_empty(_functions_shape(t, low.shape[1]))
    blocks = out.unsqueeze(1)
    native_kernels.call(native_kernels.kernel("relu", "relu_expand", t.dtype), t.contiguous(), blocks,
                        *_relu_layout(t, blocks, low, high), scale.detach().to(t.dtype).reshape(1).contiguous(),
                        native_kernels.threads())
    return out


@relu_basis.register_fake
def _(t: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return t.new_empty(_functions_shape(t, low.shape[1]))


@torch.library.custom_op("kan_zoo::relu_basis_backward", mutates_args=())
def relu_basis_backward(t: torch.Tensor, grad: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                        scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dt, dL/dphase_low, dL/dphase_high) from dL/d(functions), as ReLUBasis.expand_backward."""
    grad_t = torch.empty(t.shape, dtype=t.dtype)
    blocks = _blocks(grad)
    threads = native_kernels.threads()
    sums = torch.zeros((threads, 2) + tuple(low.shape), dtype=torch.float64)
    native_kernels.call(native_kernels.kernel("relu", "relu_backward", t.dtype), t.contiguous(), blocks, grad_t,
                        *_relu_layout(t, blocks, low, high), sums, threads)
    factor = 2.0 * float(scale.to(t.dtype)) ** 2
    grad_low, grad_high = sums.sum(0)
    return grad_t.mul_(factor), (grad_low * -factor).to(low.dtype), (grad_high * factor).to(high.dtype)


@relu_basis_backward.register_fake
def _(t: torch.Tensor, grad: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor):
    return (torch.empty(t.shape, dtype=t.dtype, device=t.device), torch.empty_like(low), torch.empty_like(high))


def _relu_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _relu_backward(ctx, grad: torch.Tensor):
    t, low, high, scale = ctx.saved_tensors
    grad_t, grad_low, grad_high = relu_basis_backward(t, grad, low, high, scale)
    return grad_t, grad_low, grad_high, None


relu_basis.register_autograd(_relu_backward, setup_context=_relu_setup)
