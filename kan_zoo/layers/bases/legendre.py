"""Legendre polynomials (KALN)."""
from __future__ import annotations

from .base import register_basis
from .recurrence import Coefficients, ThreeTermRecurrenceBasis


@register_basis
class LegendreBasis(ThreeTermRecurrenceBasis):
    """P_{n+1} = ((2n + 1) t P_n - n P_{n-1}) / (n + 1) on t = tanh(x).

    Deliberate deviation: the reference rescales x by the min/max of the whole batch, which makes
    a sample's output depend on the rest of the batch; tanh keeps samples independent.
    """

    name = "legendre"

    def coefficients(self) -> Coefficients:
        return [(1.0, 0.0, 0.0)] + [((2 * i - 1) / i, 0.0, (i - 1) / i) for i in range(2, self.degree + 1)]
