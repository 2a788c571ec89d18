"""The orthogonal-polynomial bases defined by a three-term recurrence: P_0 = 1, P_1 = a_1 t + g_1,
P_i = (a_i t + g_i) P_{i-1} - c_i P_{i-2} on t = tanh(x).

A basis of this kind only lists its coefficients; ``expand`` (autograd path) and the fused
expand+conv node's fast path (kan_zoo.layers.kernels.fused) both derive from them. The fast path writes
each P_i straight into its slot of the stacked tensor, and its backward runs the recurrence's
adjoint in a few passes per degree instead of replaying ``expand`` under autograd.
"""
from __future__ import annotations

from typing import ClassVar, Dict, List, Optional, Tuple

import torch

from .base import Basis, ones_as

Coefficients = List[Tuple[float, float, float]]  # (a_i, g_i, c_i) for i = 1..degree; c_1 is unused


class ThreeTermRecurrenceBasis(Basis):
    """A Basis whose functions P_0..P_degree follow the recurrence given by :meth:`coefficients`."""

    base_activation = "identity"
    functions_by_degree = True
    extends_by_degree = True  # coefficient i depends on i alone, so P_0..P_D are the same at every degree
    # Where set, t = tanh(x) is clamped to +-tanh_clamp (Chebyshev's acos edge); the Triton path reads it too.
    tanh_clamp: ClassVar[Optional[float]] = None

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def with_degree(self, degree: int) -> "ThreeTermRecurrenceBasis":
        return self._like(type(self)(self.channels, degree))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x)
        return t if self.tanh_clamp is None else t.clamp(-self.tanh_clamp, self.tanh_clamp)

    def coefficients(self) -> Coefficients:
        raise NotImplementedError

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        # Out of place so autograd can differentiate it; unit and zero coefficients are skipped so
        # e.g. Chebyshev's 2 t T_{i-1} - T_{i-2} rounds exactly as the reference formula.
        polys = [ones_as(t)]
        # coefficients() lists P_1's even at degree 0, where the basis is P_0 alone.
        for i, (a, g, c) in enumerate(self.coefficients()[: self.degree], start=1):
            p = t * a if a != 1 else t
            p = p + g if g else p
            if i >= 2:
                p = p * polys[-1]
                p = p - (polys[-2] * c if c != 1 else polys[-2]) if c else p
            polys.append(p)
        return polys

    def _linear(self, t: torch.Tensor, a: float, g: float) -> torch.Tensor:
        out = t * a if a != 1 else t.clone()
        return out.add_(g) if g else out

    def _polys(self, t: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """[None (P_0 = 1), P_1, ..., P_D], in t's layout."""
        coeffs = self.coefficients()
        polys: List[Optional[torch.Tensor]] = [None]
        if self.degree >= 1:
            polys.append(self._linear(t, *coeffs[0][:2]))
        for i in range(2, self.degree + 1):
            a, g, c = coeffs[i - 1]
            p = self._linear(t, a, g).mul_(polys[-1])
            p = p.sub_(c) if polys[-2] is None else p.sub_(polys[-2], alpha=c)
            polys.append(p)
        return polys

    has_constant_function = True  # P_0 = 1

    def constant_value(self, dtype: torch.dtype) -> float:
        return 1.0

    def expand_into(self, t: torch.Tensor, out: torch.Tensor, skip_constant: bool = False) -> None:
        groups, skip = out.shape[1], int(skip_constant)
        if not skip:
            out[:, :, 0].fill_(1)
        for i, p in enumerate(self._polys(t)[1:], start=1):
            out[:, :, i - skip].copy_(p.unflatten(1, (groups, -1)))

    def expand_backward(
        self, t: torch.Tensor, grad_out: torch.Tensor, skip_constant: bool = False
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """With adj_i = dL/dP_i over all paths: adj_{i-1} += (a_i t + g_i) adj_i, adj_{i-2} -= c_i adj_i,
        dL/dt += a_i adj_i P_{i-1}; the slices of grad_out are read, never written (adj_0 is never needed)."""
        if self.degree == 0:
            return torch.zeros_like(t), {}
        coeffs = self.coefficients()
        polys = self._polys(t)
        skip = int(skip_constant)
        adj: List = [None] + [grad_out[:, :, i - skip].reshape(t.shape) for i in range(1, self.degree + 1)]
        fresh = [False] * (self.degree + 1)  # adj[i] is our own tensor (may be updated in place)
        grad_t: Optional[torch.Tensor] = None
        for i in range(self.degree, 1, -1):
            a, g, c = coeffs[i - 1]
            adj_i = adj[i]
            grad_t = adj_i * polys[i - 1] * a if grad_t is None else grad_t.addcmul_(adj_i, polys[i - 1], value=a)
            step = self._linear(t, a, g).mul_(adj_i)
            adj[i - 1] = adj[i - 1].add_(step) if fresh[i - 1] else step.add_(adj[i - 1])
            fresh[i - 1] = True
            if i - 2 >= 1:
                adj[i - 2] = adj[i - 2].sub_(adj_i, alpha=c) if fresh[i - 2] else torch.sub(adj[i - 2], adj_i, alpha=c)
                fresh[i - 2] = True
        a1 = coeffs[0][0]
        grad_t = adj[1] * a1 if grad_t is None else grad_t.add_(adj[1], alpha=a1)
        return grad_t, {}
