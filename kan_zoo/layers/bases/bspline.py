"""Uniform B-splines (the original KAN)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .base import Basis, register_basis, state_shape


@register_basis
class BSplineBasis(Basis):
    """B-splines of order ``degree`` (S) on a uniform grid of ``grid_size`` intervals over ``grid_range``.

    Knots lo - S h, ..., hi + S h (h = (hi - lo) / grid_size); Cox-de Boor on the raw input gives
    grid_size + S functions. The knots are a buffer (``grid``) so grid refinement can move them.
    """

    name = "bspline"
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
        g = self.grid.to(t.dtype)
        x = t.unsqueeze(-1)
        bases = ((x >= g[:-1]) & (x < g[1:])).to(t.dtype)
        for k in range(1, self.degree + 1):
            left = (x - g[: -(k + 1)]) / (g[k:-1] - g[: -(k + 1)])
            right = (g[k + 1 :] - x) / (g[k + 1 :] - g[1:-k])
            bases = left * bases[..., :-1] + right * bases[..., 1:]
        return list(bases.unbind(-1))

    def checkpoint_grid_size(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
        shape = state_shape(state_dict, prefix + "grid")
        return shape[0] - 2 * self.degree - 1 if shape is not None and len(shape) == 1 else None

    def resized(self, grid_size: int) -> "BSplineBasis":
        return self._like(BSplineBasis(self.channels, self.degree, grid_size=grid_size, grid_range=self.grid_range))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}, grid_range={self.grid_range}"
