"""Jacobi polynomials P^(a, b) (KAJN)."""
from __future__ import annotations

from .base import register_basis
from .recurrence import Coefficients, ThreeTermRecurrenceBasis


@register_basis
class JacobiBasis(ThreeTermRecurrenceBasis):
    """Jacobi polynomials on t = tanh(x) by the standard three-term recurrence (a = b = 1 default)."""

    name = "jacobi"

    def __init__(self, channels: int, degree: int = 3, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__(channels, degree)
        if a <= -1 or b <= -1:
            raise ValueError(f"Jacobi parameters must satisfy a, b > -1, got a={a}, b={b}")
        self.a, self.b = float(a), float(b)

    def with_degree(self, degree: int) -> "JacobiBasis":
        return JacobiBasis(self.channels, degree, a=self.a, b=self.b)

    def coefficients(self) -> Coefficients:
        a, b = self.a, self.b
        coeffs = [((a + b + 2) / 2, (a - b) / 2, 0.0)]
        for i in range(2, self.degree + 1):
            s = 2 * i + a + b
            coeffs.append((
                s * (s - 1) / (2 * i * (i + a + b)),
                (s - 1) * (a * a - b * b) / (2 * i * (i + a + b) * (s - 2)),
                (i + a - 1) * (i + b - 1) * s / (i * (i + a + b) * (s - 2)),
            ))
        return coeffs

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, a={self.a}, b={self.b}"
