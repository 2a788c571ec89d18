"""Uniform B-splines (the original KAN)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..kernels import native_kernels, native_ops
from .base import Basis, register_basis, state_shape


@register_basis
class BSplineBasis(Basis):
    """B-splines of order ``degree`` (S) on a uniform grid of ``grid_size`` intervals over ``grid_range``.

    Knots lo - S h, ..., hi + S h (h = (hi - lo) / grid_size); Cox-de Boor on the raw input gives
    grid_size + S functions. The knots are a buffer (``grid``) so grid refinement can move them.
    """

    name = "bspline"
    native_library = "bspline"
    base_activation = "gelu"
    output_activation = "prelu_per_group"

    def __init__(
        self, channels: int, degree: int = 3, grid_size: int = 5, grid_range: Sequence[float] = (-1.0, 1.0)
    ) -> None:
        super().__init__(channels, degree)
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        lo, hi = (float(v) for v in grid_range)
        if not hi > lo:
            raise ValueError(f"grid_range must be increasing, got {tuple(grid_range)}")
        self.grid_size, self.grid_range = grid_size, (lo, hi)
        h = (hi - lo) / grid_size
        knots = torch.linspace(lo - degree * h, hi + degree * h, grid_size + 2 * degree + 1)
        self.register_buffer("grid", knots)

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.degree

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        if self.degree >= 1 and native_ops.traced_kernel_applies(self, t):  # a compiled graph: the C kernels
            return list(native_ops.bspline_basis(t, self.grid, self.degree).unbind(1))
        g = self.grid.to(t.dtype)
        x = t.unsqueeze(-1)
        bases = ((x >= g[:-1]) & (x < g[1:])).to(t.dtype)
        for k in range(1, self.degree + 1):
            left = (x - g[: -(k + 1)]) / (g[k:-1] - g[: -(k + 1)])
            right = (g[k + 1 :] - x) / (g[k + 1 :] - g[1:-k])
            bases = left * bases[..., :-1] + right * bases[..., 1:]
        return list(bases.unbind(-1))

    # -- the fused node's fast path: Cox-de Boor in the stacked (function-major) layout, adjoint by hand
    def _levels(self, t: torch.Tensor, level: int, out: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """B_{j, level} for all j (1 <= level <= degree), each shaped like t; the last level is written
        into ``out[:, :, j]`` when given. t is (N, G, c, *spatial).

        Why this shape of loop: the trailing-function-axis layout of :meth:`expand` runs every op
        with a tiny strided inner dimension; here every op is a contiguous pass over one function.
        D_j = t - g_j is shared by all levels, and level 1 is the hat max(0, min(left, right)),
        which equals left * I_j + right * I_{j+1} on increasing knots (one of the two is <= 1 <= the other).
        """
        g = self.host_values("grid", t.dtype)  # knots (after refits: non-uniform)
        n_knots = len(g)
        diffs = [t - gj for gj in g]  # D_j
        tmp = torch.empty_like(t)
        bases: List[torch.Tensor] = []
        for j in range(n_knots - 2):  # level 1: one hat per pair of cells
            last = level == 1 and out is not None
            b = out[:, :, j] if last else torch.empty_like(t)
            torch.mul(diffs[j], 1.0 / (g[j + 1] - g[j]), out=b)
            torch.mul(diffs[j + 2], -1.0 / (g[j + 2] - g[j + 1]), out=tmp)
            torch.minimum(b, tmp, out=b)
            b.clamp_(min=0)
            bases.append(b)
        for k in range(2, level + 1):
            last = k == level and out is not None
            for j in range(n_knots - 1 - k):
                # B_{j,k} = (t - g_j) / (g_{j+k} - g_j) B_{j,k-1} + (g_{j+k+1} - t) / (g_{j+k+1} - g_{j+1}) B_{j+1,k-1};
                # in place over B_{j,k-1}, which no later j reads.
                torch.mul(diffs[j], bases[j], out=tmp).mul_(1.0 / (g[j + k] - g[j]))
                target = out[:, :, j] if last else bases[j]
                torch.addcmul(tmp, diffs[j + k + 1], bases[j + 1], value=-1.0 / (g[j + k + 1] - g[j + 1]), out=target)
                bases[j] = target
            bases.pop()
        return bases

    def runs_native_kernels(self, t: torch.Tensor) -> bool:
        """The C kernels run the same Cox-de Boor steps as :meth:`_levels` on any increasing knots; degree 0
        is indicators only, which stays eager."""
        return self.degree >= 1 and super().runs_native_kernels(t)

    def expand_into(self, t: torch.Tensor, out: torch.Tensor) -> None:
        if self.runs_native_kernels(t) and native_kernels.block_strides(out, 3) is not None:
            return native_ops.bspline_expand_into(t, out, self.grid, self.degree)
        if self.degree == 0:  # indicators only: nothing to gain over the default
            return super().expand_into(t, out)
        self._levels(t.unflatten(1, (out.shape[1], -1)), self.degree, out)

    def expand_backward(
        self, t: torch.Tensor, grad_out: torch.Tensor
    ) -> Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        """dB_{i,S}/dt = S / (g_{i+S} - g_i) B_{i,S-1} - S / (g_{i+S+1} - g_{i+1}) B_{i+1,S-1} (Cox-de Boor's
        derivative; the knots are a buffer, so t is the only input with a gradient)."""
        s = self.degree
        if s == 0:  # piecewise constant: let autograd give its zeros
            return None
        if self.runs_native_kernels(t):
            return native_ops.bspline_grad(t, grad_out, self.grid, s), {}
        tv = t.unflatten(1, (grad_out.shape[1], -1))
        g = self.host_values("grid", t.dtype)
        if s == 1:  # B_{j,0}: the cell indicators
            lower = [(tv >= gj).to(t.dtype) for gj in g]
            below = [lower[j] - lower[j + 1] for j in range(len(g) - 1)]
        else:
            below = self._levels(tv, s - 1)
        grad_t = torch.zeros_like(tv)
        tmp = torch.empty_like(tv)
        for i in range(self.num_functions):
            torch.mul(below[i + 1], -s / (g[i + s + 1] - g[i + 1]), out=tmp)
            tmp.add_(below[i], alpha=s / (g[i + s] - g[i]))
            grad_t.addcmul_(tmp, grad_out[:, :, i])
        return grad_t.flatten(1, 2), {}

    def checkpoint_grid_size(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
        shape = state_shape(state_dict, prefix + "grid")
        return shape[0] - 2 * self.degree - 1 if shape is not None and len(shape) == 1 else None

    def resized(self, grid_size: int) -> "BSplineBasis":
        return self._like(BSplineBasis(self.channels, self.degree, grid_size=grid_size, grid_range=self.grid_range))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}, grid_range={self.grid_range}"
