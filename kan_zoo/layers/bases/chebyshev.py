"""Chebyshev polynomials of the first kind (KACN)."""
from __future__ import annotations

from .base import register_basis
from .recurrence import Coefficients, ThreeTermRecurrenceBasis

# The reference clamps tanh(x) away from +-1, where acos has infinite slope.
_EDGE = 1.0 - 1e-7


@register_basis
class ChebyshevBasis(ThreeTermRecurrenceBasis):
    """T_d(t) for d = 0..degree on t = clamp(tanh(x)), by the recurrence T_{d+1} = 2 t T_d - T_{d-1}.

    The recurrence equals the reference's cos(d acos t) with finite gradients. No base branch,
    no output activation, as in the reference.
    """

    name = "chebyshev"
    base_activation = None
    output_activation = "identity"
    tanh_clamp = _EDGE

    def coefficients(self) -> Coefficients:
        return [(1.0, 0.0, 0.0)] + [(2.0, 0.0, 1.0)] * (self.degree - 1)
