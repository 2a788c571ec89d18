"""Helpers the KAN-layer tests share: what autograd keeps, gradients for a fixed upstream gradient,
a copy of a layer that takes the plain autograd path, the C kernels switched on or off.

Import as ``from layer_helpers import ...`` (pytest puts ``tests/`` on sys.path).
"""
import contextlib
import copy
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from kan_zoo.layers import KANConvNd, set_native_kernels_enabled


@contextlib.contextmanager
def native_kernels_switched(enabled: bool) -> Iterator[None]:
    """The C basis kernels (kan_zoo.layers.kernels.native_kernels) on or off for a block, then back as they were."""
    previous = set_native_kernels_enabled(enabled)
    try:
        yield
    finally:
        set_native_kernels_enabled(previous)


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique non-parameter tensors autograd keeps for backward during one forward."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def run_with_grads(layer: nn.Module, x: torch.Tensor, seed: int = 0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Output, and gradients of the input ("input") and every parameter that got one, for a fixed
    upstream gradient (a ramp in the output's dtype). Gradients start from none and are returned as
    copies, so that runs of the same layer can be compared."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    torch.manual_seed(seed)  # same dropout masks in every mode
    y = layer(x)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape))
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    grads["input"] = x.grad
    return y.detach(), grads


Results = Tuple[torch.Tensor, Dict[str, torch.Tensor]]  # what run_with_grads returns


def assert_same_results(a: Results, b: Results, rtol: float, atol: float, grad_rtol: Optional[float] = None,
                        grad_atol: Optional[float] = None) -> None:
    """Two run_with_grads results agree: the outputs, which gradients exist, and each gradient
    (at grad_rtol / grad_atol, by default the outputs' tolerances)."""
    (ya, ga), (yb, gb) = a, b
    torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=rtol if grad_rtol is None else grad_rtol,
                                   atol=atol if grad_atol is None else grad_atol, msg=name)


def plain_autograd_copy(layer: nn.Module) -> nn.Module:
    """A copy whose KAN layers take the plain autograd path: the hand-run nodes need a numeric padding."""
    ref = copy.deepcopy(layer)
    for m in ref.modules():
        if isinstance(m, KANConvNd):
            m.numeric_padding = None
            m.memory_efficient = False
    return ref


def gradient_penalty_grads(model: nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Parameter gradients of |d sum(model(x)^2) / dx|^2: a backward through a create_graph=True gradient."""
    xi = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(model(xi).square().sum(), xi, create_graph=True)
    grad_x.square().sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}
