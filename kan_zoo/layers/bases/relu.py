"""ReLU-KAN: squared products of ReLUs, a cheap bell on each grid cell."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..kernels import native_kernels, native_ops
from .base import Basis, register_basis, state_shape


@register_basis
class ReLUBasis(Basis):
    """B_i = (r ReLU(x - a_i) ReLU(b_i - x))^2 with learnable phases a, b per input channel.

    g = ``grid_size``, k = ``degree``: a_i = (i - k) / g, b_i = a_i + (k + 1) / g, i = 0..g + k - 1,
    r = 4 g^2 / (k + 1)^2. The reference shares one (c, g + k) pair across groups; here each input
    channel has its own, which the converter fills by repeating the reference's.

    r (``scale``) is a persistent 0-dim buffer: grid refinement (kan_zoo.grid) sets it from the
    refitted cell width, and a reloaded model must compute with that value, not the initial one.
    """

    name = "relu"
    native_library = "relu"
    added_buffers = ("scale",)

    def __init__(self, channels: int, degree: int = 3, grid_size: int = 5, train_phases: bool = True) -> None:
        super().__init__(channels, degree)
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        self.grid_size = grid_size
        k, g = degree, grid_size
        low = (torch.arange(g + k, dtype=torch.float32) - k) / g
        self.phase_low = nn.Parameter(low.repeat(channels, 1), requires_grad=train_phases)
        self.phase_high = nn.Parameter(low.repeat(channels, 1) + (k + 1) / g, requires_grad=train_phases)
        # A buffer, so state_dict / EMA / DDP carry the refitted value (see the class doc).
        self.register_buffer("scale", torch.tensor(4.0 * g * g / ((k + 1) ** 2)))

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.degree

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        if native_ops.traced_kernel_applies(self, t):  # a compiled graph: the C kernels
            return list(native_ops.relu_basis(t, self.phase_low, self.phase_high, self.scale).unbind(1))
        spatial = (1,) * (t.ndim - 2)
        x = t.unsqueeze(2)  # (N, C, 1, *spatial)
        low = self.phase_low.to(t.dtype).reshape(self.phase_low.shape + spatial)
        high = self.phase_high.to(t.dtype).reshape(self.phase_high.shape + spatial)
        bell = self.scale.to(t.dtype) * torch.relu(x - low) * torch.relu(high - x)
        return list((bell * bell).unbind(2))

    # -- the fused node's fast path: each bell written in place in the stacked layout, adjoint by hand
    def _phases(self, t: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """phase_low / phase_high as (F, 1, G, C / G, 1, ...): slice i broadcasts against t (N, G, C / G, *spatial)."""
        shape = (self.num_functions, 1, groups, -1) + (1,) * (t.ndim - 2)
        # detached: the fast path never runs under autograd, and out= ops refuse tensors that need grad
        low = self.phase_low.detach().to(t.dtype).t().reshape(shape)
        high = self.phase_high.detach().to(t.dtype).t().reshape(shape)
        return low, high

    def expand_into(self, t: torch.Tensor, out: torch.Tensor) -> None:
        if self.runs_native_kernels(t) and native_kernels.block_strides(out, 3) is not None:
            return native_ops.relu_expand_into(t, out, self.phase_low, self.phase_high, self.scale)
        tv = t.unflatten(1, (out.shape[1], -1))
        low, high = self._phases(t, out.shape[1])
        scale = self.host_values("scale", t.dtype)[0]
        tmp = torch.empty_like(tv)
        for i in range(self.num_functions):
            # (scale * relu(x - a)) * relu(b - x), squared: the same order (and roundings) as expand
            bell = torch.sub(tv, low[i], out=out[:, :, i]).relu_().mul_(scale)
            bell.mul_(torch.sub(high[i], tv, out=tmp).relu_())
            bell.mul_(bell)

    def expand_backward(self, t: torch.Tensor, grad_out: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """B = (s P Q)^2 with P = relu(x - a), Q = relu(b - x). Where B != 0 both P, Q > 0, so with
        h = P Q dL/dB: dL/dx = 2 s^2 h (Q - P), dL/da = -2 s^2 h Q, dL/db = 2 s^2 h P; where B = 0
        every term is 0, as autograd's relu backward gives."""
        groups = grad_out.shape[1]
        factor = 2.0 * self.host_values("scale", t.dtype)[0] ** 2
        want_low, want_high = self.phase_low.requires_grad, self.phase_high.requires_grad
        if self.runs_native_kernels(t):
            grad_t, grad_low, grad_high = native_ops.relu_grads(t, grad_out, self.phase_low, self.phase_high,
                                                                self.scale)
            wanted = {"phase_low": (want_low, grad_low), "phase_high": (want_high, grad_high)}
            return grad_t, {name: grad for name, (want, grad) in wanted.items() if want}
        tv = t.unflatten(1, (groups, -1))
        low, high = self._phases(t, groups)
        reduce_dims = (0,) + tuple(range(3, tv.ndim))  # batch and spatial: one value per channel
        grad_t = torch.zeros_like(tv)
        p, q, h = torch.empty_like(tv), torch.empty_like(tv), torch.empty_like(tv)
        grad_low: List[torch.Tensor] = []
        grad_high: List[torch.Tensor] = []
        for i in range(self.num_functions):
            torch.sub(tv, low[i], out=p).relu_()
            torch.sub(high[i], tv, out=q).relu_()
            torch.mul(p, q, out=h).mul_(grad_out[:, :, i])
            q.mul_(h)  # h Q
            p.mul_(h)  # h P
            grad_t.add_(q).sub_(p)
            if want_low:
                grad_low.append(q.sum(reduce_dims).flatten())
            if want_high:
                grad_high.append(p.sum(reduce_dims).flatten())
        grads: Dict[str, torch.Tensor] = {}
        if want_low:
            grads["phase_low"] = torch.stack(grad_low, 1).mul_(-factor).to(self.phase_low.dtype)
        if want_high:
            grads["phase_high"] = torch.stack(grad_high, 1).mul_(factor).to(self.phase_high.dtype)
        return grad_t.mul_(factor).flatten(1, 2), grads

    def checkpoint_grid_size(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
        shape = state_shape(state_dict, prefix + "phase_low")
        return shape[1] - self.degree if shape is not None and len(shape) == 2 else None

    def resized(self, grid_size: int) -> "ReLUBasis":
        train = self.phase_low.requires_grad
        return self._like(ReLUBasis(self.channels, self.degree, grid_size=grid_size, train_phases=train))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}"
