"""A basis's constant function (P_0 = 1 of the polynomial bases) in closed form.

Its block of the stacked tensor is one value c everywhere, so its part of the convolution is c times
the convolution of an all-ones image (zero-padded like the input) with that block's kernels summed
over its input channels: the same (1, C_out, *spatial) map for every sample. The layer's fast paths
(kan_zoo.layers.conv, kan_zoo.layers.kernels.fused) leave the block out of the stacked tensor and add this
instead, so the convolution runs over one function fewer (gram degree 3: 4 of 5 blocks, about a fifth
of its time) and the stacked tensor kept for backward is a block smaller; compiled graphs do the same in
plain ops. The eager plain autograd path, the reference, and exports still convolve the constant block.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

__all__ = ["split_constant", "constant_response", "constant_weight_grad"]


def _constant_block(layer: nn.Module) -> int:
    return int(layer.base_folded)  # the basis's function 0, after the base branch where it is folded in


def _ones_image(like: torch.Tensor) -> torch.Tensor:
    return like.new_ones((1, 1) + like.shape[2:])


def split_constant(layer: nn.Module, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight without the constant function's block, that block summed over its input channels as a
    (C_out, 1, *kernel) kernel)."""
    k = _constant_block(layer)
    blocks = weight.unflatten(1, (layer.num_functions, -1))
    rest = torch.cat([blocks[:, :k], blocks[:, k + 1 :]], 1).flatten(1, 2)
    return rest, blocks[:, k].sum(1, keepdim=True)


def constant_response(layer: nn.Module, summed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The constant function's share of the layer's output for an input shaped like x: (1, C_out, *out)."""
    response = layer._conv(_ones_image(x), summed, 1)
    return response.mul_(layer.basis.constant_value(x.dtype))


def constant_weight_grad(layer: nn.Module, grad_y: torch.Tensor, x: torch.Tensor, summed: torch.Tensor,
                         rest_grad: torch.Tensor) -> torch.Tensor:
    """The whole weight gradient from that of the other blocks (``rest_grad``) and grad_y: each input
    channel of the constant block gets the gradient of the summed kernel."""
    _, summed_grad, _ = torch.ops.aten.convolution_backward(
        grad_y.sum(0, keepdim=True), _ones_image(x), summed, None, layer.stride, layer.numeric_padding,
        layer.dilation, False, [0] * layer.ndim, 1, [False, True, False],
    )
    k, functions = _constant_block(layer), layer.num_functions
    rest = rest_grad.unflatten(1, (functions - 1, -1))
    grad = rest_grad.new_empty((rest.shape[0], functions) + rest.shape[2:])
    grad[:, :k], grad[:, k + 1 :] = rest[:, :k], rest[:, k:]
    grad[:, k] = summed_grad.mul_(layer.basis.constant_value(x.dtype))
    return grad.flatten(1, 2)
