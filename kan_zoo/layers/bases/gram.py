"""Gram polynomials (KAGN), the basis of the published ImageNet checkpoints."""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from .base import Basis, register_basis


@register_basis
class GramBasis(Basis):
    """P_0 = 1, P_1 = t, P_i = t P_{i-1} - beta(i-1, i) P_{i-2} on t = tanh(x); functions SiLU(P_i).

    beta(n, m) = w_n (m + n)(m - n) n^2 / (m^2 / (4 n^2 - 1)) with learnable ``beta_weights`` w.
    w has degree + 1 entries although only w_1 .. w_{D-1} are used: the reference checkpoints
    store that shape.
    """

    name = "gram"

    def __init__(self, channels: int, degree: int = 3) -> None:
        super().__init__(channels, degree)
        self.beta_weights = nn.Parameter(torch.zeros(degree + 1))
        # The parameter-free factor of beta(i - 1, i) for i = 2..degree, kept as Python floats so it
        # is exact in float64 (a float32 buffer would limit float64 runs to ~1e-8).
        self.beta_factors = [
            (2 * n + 1) * n**2 / ((n + 1) ** 2 / (4.0 * n**2 - 1.0)) for n in range(1, max(degree, 1))
        ]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The reference initialises w ~ N(0, 1 / (kernel_size * (degree + 1))); a small spread is what matters.
        nn.init.normal_(self.beta_weights, std=1.0 / (3.0 * (self.degree + 1.0)))

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        polys = [torch.ones_like(t)]
        if self.degree >= 1:
            polys.append(t)
        for i in range(2, self.degree + 1):
            beta = self.beta_factors[i - 2] * self.beta_weights[i - 1]
            polys.append(t * polys[-1] - beta * polys[-2])
        return [F.silu(p) for p in polys]
