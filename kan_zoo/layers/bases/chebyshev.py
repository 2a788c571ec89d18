"""Chebyshev polynomials of the first kind (KACN)."""
from __future__ import annotations

from typing import List

import torch

from .base import Basis, register_basis
from .recurrence import Coefficients, RecurrenceFastPath

# The reference clamps tanh(x) away from +-1, where acos has infinite slope.
_EDGE = 1.0 - 1e-7


@register_basis
class ChebyshevBasis(RecurrenceFastPath, Basis):
    """T_d(t) for d = 0..degree on t = clamp(tanh(x)), by the recurrence T_{d+1} = 2 t T_d - T_{d-1}.

    The recurrence equals the reference's cos(d acos t) with finite gradients. No base branch,
    no output activation, as in the reference.
    """

    name = "chebyshev"
    base_activation = None
    output_activation = "identity"

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x).clamp(-_EDGE, _EDGE)

    def coefficients(self) -> Coefficients:
        return [(1.0, 0.0, 0.0)] + [(2.0, 0.0, 1.0)] * (self.degree - 1)

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        polys = [torch.ones_like(t)]
        if self.degree >= 1:
            polys.append(t)
        for _ in range(2, self.degree + 1):
            polys.append(2 * t * polys[-1] - polys[-2])
        return polys
