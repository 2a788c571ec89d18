"""ReLU-KAN: squared products of ReLUs, a cheap bell on each grid cell."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .base import Basis, register_basis


@register_basis
class ReLUBasis(Basis):
    """B_i = (r ReLU(x - a_i) ReLU(b_i - x))^2 with learnable phases a, b per input channel.

    g = ``grid_size``, k = ``degree``: a_i = (i - k) / g, b_i = a_i + (k + 1) / g, i = 0..g + k - 1,
    r = 4 g^2 / (k + 1)^2. The reference shares one (c, g + k) pair across groups; here each input
    channel has its own, which the converter fills by repeating the reference's.
    """

    name = "relu"

    def __init__(self, channels: int, degree: int = 3, grid_size: int = 5, train_phases: bool = True) -> None:
        super().__init__(channels, degree)
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        self.grid_size = grid_size
        k, g = degree, grid_size
        low = (torch.arange(g + k, dtype=torch.float32) - k) / g
        self.phase_low = nn.Parameter(low.repeat(channels, 1), requires_grad=train_phases)
        self.phase_high = nn.Parameter(low.repeat(channels, 1) + (k + 1) / g, requires_grad=train_phases)
        self.scale = 4.0 * g * g / ((k + 1) ** 2)

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.degree

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        spatial = (1,) * (t.ndim - 2)
        x = t.unsqueeze(2)  # (N, C, 1, *spatial)
        low = self.phase_low.to(t.dtype).reshape(self.phase_low.shape + spatial)
        high = self.phase_high.to(t.dtype).reshape(self.phase_high.shape + spatial)
        bell = self.scale * torch.relu(x - low) * torch.relu(high - x)
        return list((bell * bell).unbind(2))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}"
