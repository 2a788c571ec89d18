"""Legendre polynomials (KALN)."""
from __future__ import annotations

from typing import List

import torch

from .base import Basis, register_basis
from .recurrence import Coefficients, RecurrenceFastPath


@register_basis
class LegendreBasis(RecurrenceFastPath, Basis):
    """P_{n+1} = ((2n + 1) t P_n - n P_{n-1}) / (n + 1) on t = tanh(x).

    Deliberate deviation: the reference rescales x by the min/max of the whole batch, which makes
    a sample's output depend on the rest of the batch; tanh keeps samples independent.
    """

    name = "legendre"
    base_activation = "identity"

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def coefficients(self) -> Coefficients:
        return [(1.0, 0.0, 0.0)] + [((2 * i - 1) / i, 0.0, (i - 1) / i) for i in range(2, self.degree + 1)]

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        polys = [torch.ones_like(t)]
        if self.degree >= 1:
            polys.append(t)
        for n in range(1, self.degree):
            polys.append(((2 * n + 1) * t * polys[-1] - n * polys[-2]) / (n + 1))
        return polys
