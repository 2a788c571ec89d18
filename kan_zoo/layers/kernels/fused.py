"""The basis expansion and its convolution as ONE autograd node, with a hand-run backward.

Why: left to autograd, a KAN conv keeps every intermediate of the basis recurrence plus the stacked
(basis size + 1) x C_in tensor for backward, and its backward walks the recurrence op by op. This
node keeps only what it chooses:
  * default mode: the input and the stacked basis (the conv needs it for the weight gradient);
    a constant basis function (P_0 = 1) is not in it: the layer adds its share in closed form;
  * memory-efficient mode: the input only; backward rebuilds the stacked basis without grad
    (one extra pass of elementwise work, no extra convolution), so the layer keeps about the
    activations of a plain conv.
Backward then runs the conv's backward once (aten.convolution_backward) and pushes the gradient of
the stacked tensor through the basis by re-running the basis under autograd. Outputs and gradients
equal the plain autograd path up to float rounding (tests/layers/test_memory_efficient.py).

The layer falls back to plain autograd (or to checkpointing, in memory-efficient mode) where this
node does not apply: autocast, torch.compile and export tracing, and 'same' padding that is not
symmetric (compiled CPU graphs can call the node instead: KANConvNd.compile_calls_eager_node); which
path runs when: kan_zoo.layers.kernels. What the node needs of the layer it gets as the layer itself.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..constant_function import constant_weight_grad, split_constant
from ..helpers import WHOLE, batch_chunks, take

__all__ = ["ExpandConvFunction", "grads_where_needed", "swap_parameters"]


@contextlib.contextmanager
def swap_parameters(module: nn.Module, tensors: Dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily make ``module``'s parameters the given tensors (by qualified name).

    Backward recomputes the basis with the parameter tensors the forward saw, which under
    torch.func.functional_call are not the module's own parameters any more.
    """
    saved = []
    try:
        for name, tensor in tensors.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            saved.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = tensor  # type: ignore[assignment]
        yield
    finally:
        for owner, leaf, original in reversed(saved):
            owner._parameters[leaf] = original


class ExpandConvFunction(torch.autograd.Function):
    """y = conv(layer.stacked_basis(x, u, mask), weight) for a KANConvNd ``layer``.

    x feeds the base branch, u the basis (``prepare(u) * mask``); for most layers x is u. The basis
    parameters come last so that autograd routes their gradients.
    """

    @staticmethod
    def forward(ctx, layer, keep_basis: bool, x, u, mask, weight, *params):  # type: ignore[override]
        y, stacked = layer.conv_expanded(x, u, mask, weight, keep=keep_basis)
        ctx.layer = layer
        ctx.x_is_u = x is u
        ctx.param_names = [name for name, _ in layer.basis.named_parameters()]
        ctx.save_for_backward(x, None if x is u else u, mask, weight, stacked, *params)  # stacked: None unless kept
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x, u, mask, weight, stacked, *params = ctx.saved_tensors
        if ctx.x_is_u:
            u = x
        layer = ctx.layer
        if torch.is_grad_enabled():  # create_graph=True (e.g. a gradient penalty): differentiable replay
            return _differentiable_backward(ctx, layer, x, u, mask, weight, params, grad_y)
        need_x, need_u, _, need_w = ctx.needs_input_grad[2:6]
        need_params = ctx.needs_input_grad[6:]
        need_basis = need_x or need_u or any(need_params)
        skip = layer.skips_constant(x)
        if stacked is None:  # memory-efficient mode: rebuild what the forward did not keep
            with torch.no_grad(), swap_parameters(layer.basis, dict(zip(ctx.param_names, params))):
                stacked = layer.stacked_basis_into(x, u, mask, skip_constant=skip)
        conv_weight, summed = split_constant(layer, weight) if skip else (weight, None)
        grad_stacked, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_y, stacked, conv_weight, None, layer.stride, layer.numeric_padding, layer.dilation, False,
            [0] * layer.ndim, layer.groups, [need_basis, need_w, False],
        )
        if need_w and skip:
            grad_w = constant_weight_grad(layer, grad_y, u, summed, grad_w)
        # The function values (kept or rebuilt), for a basis whose backward reads them instead of recomputing.
        kept = stacked if layer.basis.backward_reads_functions else None
        del stacked
        grads: List[Optional[torch.Tensor]] = [None] * (3 + len(params))  # x, u, params
        if need_basis:
            grads = _basis_backward(ctx, layer, x, u, mask, params, grad_stacked, need_x, need_u, need_params, skip,
                                    kept)
        grad_x, grad_u, *grad_params = grads
        if ctx.x_is_u:
            grad_x, grad_u = grad_x, None
        return (None, None, grad_x, grad_u, None, grad_w, *grad_params)


def _differentiable_backward(ctx, layer, x, u, mask, weight, params, grad_y) -> tuple:
    """Backward as a graph of ordinary ops (the saved tensors keep their history), so that the
    gradients can be differentiated again; slower, used only when autograd asks for create_graph."""
    with swap_parameters(layer.basis, dict(zip(ctx.param_names, params))):
        y = layer._conv(layer.stacked_basis(x, u, mask), weight, layer.groups)
    inputs = [x, None if ctx.x_is_u else u, weight, *params]
    needs = ctx.needs_input_grad[2:4] + ctx.needs_input_grad[5:]
    grad_x, grad_u, grad_w, *grad_params = grads_where_needed([y], inputs, [grad_y], needs, create_graph=True)
    return (None, None, grad_x, grad_u, None, grad_w, *grad_params)


def grads_where_needed(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[Optional[torch.Tensor]],
    grad_outputs: Sequence[torch.Tensor],
    needs: Optional[Sequence[bool]] = None,
    create_graph: bool = False,
) -> List[Optional[torch.Tensor]]:
    """torch.autograd.grad for the inputs that are needed (``needs``, default: those requiring grad;
    None entries never), as a list aligned with ``inputs``: None where not needed or not reached."""
    needs = [t is not None and t.requires_grad for t in inputs] if needs is None else needs
    wanted = [t is not None and need for t, need in zip(inputs, needs)]
    wrt = [t for t, want in zip(inputs, wanted) if want]
    found = iter(
        torch.autograd.grad(outputs, wrt, grad_outputs, create_graph=create_graph, allow_unused=True)
        if len(outputs) and wrt else [None] * len(wrt)
    )
    return [next(found) if want else None for want in wanted]


def _basis_backward(ctx, layer, x, u, mask, params, grad_stacked, need_x, need_u, need_params, skip: bool,
                    stacked: Optional[torch.Tensor] = None) -> list:
    """Gradients of (x, u, *params) given the gradient of the stacked basis (without the constant
    function where ``skip``), by re-running the basis under autograd with the stacked gradient split
    back into one gradient per function."""
    with torch.enable_grad():
        xd = x.detach().requires_grad_(need_x or (ctx.x_is_u and need_u)) if x is not None else None
        ud = xd if ctx.x_is_u else (u.detach().requires_grad_(need_u) if u is not None else None)
        pd = [p.detach().requires_grad_(need) for p, need in zip(params, need_params)]
        by_name = dict(zip(ctx.param_names, pd))
        fast = _basis_backward_by_hand(layer, xd, ud, mask, by_name, grad_stacked, skip, stacked)
        if fast is not None:
            return fast
        with swap_parameters(layer.basis, by_name):
            functions = layer.basis_functions(xd, ud, mask)
        if skip:
            del functions[int(xd is not None)]
        g = grad_stacked.unflatten(1, (layer.groups, len(functions), -1))
        outs, grad_outs = [], []
        for f, fn in enumerate(functions):
            if fn.requires_grad:  # constants (P_0 = 1) carry no gradient
                outs.append(fn)
                grad_outs.append(g.select(2, f).reshape(fn.shape))
        return grads_where_needed(outs, [xd, None if ctx.x_is_u else ud] + pd, grad_outs)


def _basis_backward_by_hand(layer, xd, ud, mask, params: Dict[str, torch.Tensor], grad_stacked,
                            skip: bool, stacked: Optional[torch.Tensor] = None) -> Optional[list]:
    """Like _basis_backward, with the basis's own expand_backward for the functions; autograd only
    differentiates the one-op prepare (e.g. tanh) and the base activation. None if the basis has none.
    ``stacked``: the stacked tensor the conv ran on, for a basis whose backward reads its function values."""
    first = int(xd is not None)  # the fused node passes x only when the base branch is folded in
    t = layer.basis.prepare(ud)
    if mask is not None:
        t = t * mask
    layout = (layer.groups, first + layer.basis.num_functions - int(skip), -1)
    g = grad_stacked.unflatten(1, layout)
    functions = stacked.unflatten(1, layout)[:, :, first:] if stacked is not None else None
    with torch.no_grad(), swap_parameters(layer.basis, params):
        result = _expand_backward_by_chunks(layer.basis, t.detach(), g[:, :, first:], skip, functions)
    if result is None:
        return None
    grad_t, param_grads = result
    outs, grad_outs = ([t], [grad_t]) if t.requires_grad else ([], [])
    if first:
        base = layer.basis.base(xd)
        if base.requires_grad:
            outs.append(base)
            grad_outs.append(g[:, :, 0].reshape(base.shape))
    result_grads = grads_where_needed(outs, [xd, None if xd is ud else ud], grad_outs)
    for name, p in params.items():
        result_grads.append(param_grads.get(name) if p.requires_grad else None)
    return result_grads


def _expand_backward_by_chunks(basis, t: torch.Tensor, grad_out: torch.Tensor, skip: bool,
                               functions: Optional[torch.Tensor] = None) -> Optional[tuple]:
    """``basis.expand_backward`` a piece of the batch at a time (helpers.batch_chunks: the temporaries
    stay in cache); parameter gradients are summed over the pieces."""
    options = {"skip_constant": True} if skip else {}
    if functions is not None:
        options["functions"] = functions
    chunks = batch_chunks(t) if basis.expands_in_pieces(t) else [WHOLE]
    if len(chunks) == 1:
        return basis.expand_backward(t, grad_out, **options)
    grad_t = torch.empty_like(t)
    param_grads: Dict[str, torch.Tensor] = {}
    for chunk in chunks:
        if functions is not None:
            options["functions"] = take(functions, chunk, channel_dims=3)
        result = basis.expand_backward(take(t, chunk), take(grad_out, chunk, channel_dims=3), **options)
        if result is None:
            return None
        take(grad_t, chunk).copy_(result[0])
        for name, grad in result[1].items():
            param_grads[name] = param_grads[name] + grad if name in param_grads else grad
    return grad_t, param_grads
