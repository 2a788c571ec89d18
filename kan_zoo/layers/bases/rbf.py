"""Gaussian radial basis functions (FastKAN)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..kernels import native_kernels, native_ops
from .base import Basis, register_basis, state_shape


@register_basis
class RBFBasis(Basis):
    """exp(-((z - mu_i) / h)^2) with mu = linspace(lo, hi, grid_size), h = (hi - lo) / (grid_size - 1).

    z is the layer's norm applied to the INPUT channels (``normalizes_input``), as in FastKAN; the
    layer has no output norm or activation. ``degree`` does not apply: ``grid_size`` sets the size.

    ``inv_width`` (1 / h) is a persistent buffer, not a constant: grid refinement (kan_zoo.grid)
    moves the centres and changes h, and a reloaded model must compute with the refitted width.
    """

    name = "rbf"
    native_library = "rbf"
    added_buffers = ("inv_width",)
    output_activation = "identity"
    normalizes_input = True

    def __init__(
        self, channels: int, degree: int = 3, grid_size: int = 8, grid_range: Sequence[float] = (-2.0, 2.0)
    ) -> None:
        super().__init__(channels, degree)
        if grid_size < 2:
            raise ValueError(f"grid_size must be >= 2 for the rbf basis, got {grid_size}")
        lo, hi = (float(v) for v in grid_range)
        if not hi > lo:
            raise ValueError(f"grid_range must be increasing, got {tuple(grid_range)}")
        self.grid_size, self.grid_range = grid_size, (lo, hi)
        self.register_buffer("grid", torch.linspace(lo, hi, grid_size))
        # 0-dim buffer: saved with the weights, moved by .to(), copied by EMA and broadcast by DDP.
        self.register_buffer("inv_width", torch.tensor((grid_size - 1) / (hi - lo)))

    @property
    def num_functions(self) -> int:
        return self.grid_size

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        if native_ops.traced_kernel_applies(self, t):  # a compiled graph: the C kernels
            return list(native_ops.rbf_basis(t, self.grid, self.inv_width).unbind(1))
        z = (t.unsqueeze(-1) - self.grid.to(t.dtype)) * self.inv_width.to(t.dtype)
        return list(torch.exp(-(z * z)).unbind(-1))

    # -- the fused node's fast path: each Gaussian written in place in the stacked layout, adjoint by hand
    def expand_into(self, t: torch.Tensor, out: torch.Tensor) -> None:
        if self.runs_native_kernels(t) and native_kernels.block_strides(out, 3) is not None:
            return native_ops.rbf_expand_into(t, out, self.grid, self.inv_width)
        tv = t.unflatten(1, (out.shape[1], -1))
        inv_width = self.host_values("inv_width", t.dtype)[0]  # a scalar: in-place ops take it without broadcasting
        for i, mu in enumerate(self.host_values("grid", t.dtype)):
            z = torch.sub(tv, mu, out=out[:, :, i]).mul_(inv_width)
            z.mul_(z).neg_().exp_()  # exp(-(z * z)), the same roundings as expand

    backward_reads_functions = True  # the Gaussians themselves: no exp in backward where they were kept

    def expand_backward(
        self, t: torch.Tensor, grad_out: torch.Tensor, functions: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """d/dt exp(-z_i^2) = -2 z_i inv_width exp(-z_i^2); centres and width are buffers (no gradient).
        ``functions``: the forward's exp(-z_i^2) in grad_out's layout, else recomputed."""
        if self.runs_native_kernels(t):
            return native_ops.rbf_grad(t, grad_out, self.grid, self.inv_width, functions), {}
        tv = t.unflatten(1, (grad_out.shape[1], -1))
        inv_width = self.host_values("inv_width", t.dtype)[0]
        grad_t = torch.zeros_like(tv)
        z, e = torch.empty_like(tv), torch.empty_like(tv)
        for i, mu in enumerate(self.host_values("grid", t.dtype)):
            torch.sub(tv, mu, out=z).mul_(inv_width)
            if functions is None:
                torch.mul(z, z, out=e).neg_().exp_().mul_(z)
            else:
                torch.mul(functions[:, :, i], z, out=e)
            grad_t.addcmul_(e, grad_out[:, :, i])
        return grad_t.mul_(-2.0 * inv_width).flatten(1, 2), {}

    def checkpoint_grid_size(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
        shape = state_shape(state_dict, prefix + "grid")
        return shape[0] if shape is not None and len(shape) == 1 else None

    def resized(self, grid_size: int) -> "RBFBasis":
        return self._like(RBFBasis(self.channels, self.degree, grid_size=grid_size, grid_range=self.grid_range))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, grid_size={self.grid_size}, grid_range={self.grid_range}"
