"""The one point where a KAN layer picks how its basis convolution runs (the table: kan_zoo.layers.kernels).

The core calls :func:`expand_conv` for a separable basis and :func:`non_separable_branch` for the wavelet;
both take the layer itself, whose methods (the plain ops, the in-place expansion) the paths call back.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fused import ExpandConvFunction
from .fused_wavelet import convolve_chunked
from .triton_basis import expand_conv as triton_expand_conv
from .triton_basis import triton_applies

__all__ = ["expand_conv", "non_separable_branch", "eager_fast_path"]


def expand_conv(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    """``layer``'s conv(stacked basis of (x, u), weight), by the first path of the table that applies."""
    if layer.compile_calls_eager_node and _calls_eager_node_from_graph(u):
        return _expand_conv_outside_graph(layer, x, u)
    mask = layer.dropout_mask(u)
    y = _expand_conv_masked(layer, x, u, mask)
    # An adapter's term (kan_zoo.peft) sees the same input and dropout mask; added after the layer's own
    # convolution, which stays bit for bit what it is without one.
    return y if layer.adapter is None else y + layer.adapter(layer, x, u, mask)


def _expand_conv_masked(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor,
                        mask: Optional[torch.Tensor]) -> torch.Tensor:
    params = list(layer.basis.parameters())
    needs_grad = torch.is_grad_enabled() and (
        u.requires_grad or layer.weight.requires_grad or any(p.requires_grad for p in params)
        or (x is not None and x.requires_grad)
    )
    if triton_applies(layer, x, u, mask):  # CUDA: one fused kernel each way
        return triton_expand_conv(layer, x, u, mask, params, needs_grad)
    eager = eager_fast_path(u)
    # Compiled graphs leave the constant block out as the eager nodes do (one function fewer to convolve);
    # the eager plain ops and exports keep it, as the reference.
    skip_constant = _compiling_a_graph() and layer.skips_constant(x)
    if not needs_grad:  # inference: no per-function tensors, no concatenation pass, no constant channels
        if eager:
            return layer.conv_expanded(x, u, mask, layer.weight, keep=False)[0]
        return layer.expand_conv_plain(x, u, mask, skip_constant)
    if eager and layer.numeric_padding is not None:
        return ExpandConvFunction.apply(layer, not layer.memory_efficient, x, u, mask, layer.weight, *params)
    if layer.memory_efficient:
        return checkpoint(layer.expand_conv_plain, x, u, mask, skip_constant, use_reentrant=False)
    return layer.expand_conv_plain(x, u, mask, skip_constant)


def non_separable_branch(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """The basis branch of a non-separable basis (wavelet), whose tensor is C_out / G times t."""
    if layer.numeric_padding is not None and t.device.type != "meta" and not torch.jit.is_tracing():
        # Chunked, keeps only t (.fused_wavelet). Compiled models call it too, outside the graph: the
        # compiled plain ops ran 3x slower than the eager node and kept the big tensor.
        if not torch.compiler.is_compiling():
            return convolve_chunked(layer, t)
        if layer.compile_calls_eager_node is not False and not torch.compiler.is_exporting():  # exporters: plain
            return _convolve_chunked_outside_graph(layer, t)
    if layer.memory_efficient and torch.is_grad_enabled():
        return checkpoint(layer.basis.convolve, t, layer._conv, use_reentrant=False)
    return layer.basis.convolve(t, layer._conv)


def eager_fast_path(u: torch.Tensor) -> bool:
    """Whether the hand-run nodes (fused, fused_wavelet) may run: eagerly only, because the compiler
    and exporters must see the plain ops, meta tensors have nothing to compute, and autocast picks
    dtypes per op, which the nodes' preallocated tensors would not follow. torch.jit.trace (what the
    legacy ONNX exporter, torch.onnx.export(dynamo=False), runs) records only the ops it sees: the
    nodes' writes into preallocated tensors and their C kernels would be missing from its graph."""
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and u.device.type != "meta"
        and not torch.is_autocast_enabled(u.device.type)
    )


def _compiling_a_graph() -> bool:
    """Inside a torch.compile trace that is not an export (exporters must see the reference ops)."""
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()


def _calls_eager_node_from_graph(u: torch.Tensor) -> bool:
    """Whether a compiled CPU graph may call the eager fused node instead of compiling the plain ops
    (where the layer's compile_calls_eager_node is True): per layer, inductor's code for the grid bases'
    plain ops ran at 0.71-0.88x the node's speed (no reuse of values kept by forward), the called node
    at 1.00-1.03x. Exporters still see the plain ops; GPUs compile them."""
    return _compiling_a_graph() and u.device.type == "cpu"


# What torch.compile(fullgraph=True) reports where it meets the graph break.
_FULLGRAPH_HINT = ("kan_zoo's KAN layers run their eager node here; for fullgraph=True set "
                   "kan_zoo.layers.KANConvNd.compile_calls_eager_node = False (plain ops in the graph)")


@torch.compiler.disable(reason=_FULLGRAPH_HINT)
def _expand_conv_outside_graph(layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    return layer.expand_conv(x, u)


@torch.compiler.disable(reason=_FULLGRAPH_HINT)
def _convolve_chunked_outside_graph(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    return convolve_chunked(layer, t)
