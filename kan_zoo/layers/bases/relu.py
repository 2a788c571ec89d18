"""ReLU-KAN: squared products of ReLUs, a cheap bell on each grid cell."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

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
        spatial = (1,) * (t.ndim - 2)
        x = t.unsqueeze(2)  # (N, C, 1, *spatial)
        low = self.phase_low.to(t.dtype).reshape(self.phase_low.shape + spatial)
        high = self.phase_high.to(t.dtype).reshape(self.phase_high.shape + spatial)
        bell = self.scale.to(t.dtype) * torch.relu(x - low) * torch.relu(high - x)
        return list((bell * bell).unbind(2))

    def checkpoint_grid_size(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
        shape = state_shape(state_dict, prefix + "phase_low")
        return shape[1] - self.degree if shape is not None and len(shape) == 2 else None

    def resized(self, grid_size: int) -> "ReLUBasis":
        train = self.phase_low.requires_grad
        return self._like(ReLUBasis(self.channels, self.degree, grid_size=grid_size, train_phases=train))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}"
