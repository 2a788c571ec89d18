"""Bernstein polynomials (KABN)."""
from __future__ import annotations

import math
from typing import List

import torch

from .base import Basis, register_basis


@register_basis
class BernsteinBasis(Basis):
    """B_{k,D}(t) = C(D, k) t^k (1 - t)^(D - k) on t = sigmoid(x), k = 0..D.

    Deliberate deviation: the reference's de Casteljau loop returns all ones; this is the true basis.
    """

    name = "bernstein"
    base_activation = "identity"

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        d = self.degree
        one_minus = 1 - t
        # Powers built by repeated products: no pow() with a zero exponent and its 0 * log(0) gradient.
        t_pows = [torch.ones_like(t)]
        u_pows = [torch.ones_like(t)]
        for _ in range(d):
            t_pows.append(t_pows[-1] * t)
            u_pows.append(u_pows[-1] * one_minus)
        return [math.comb(d, k) * t_pows[k] * u_pows[d - k] for k in range(d + 1)]
