"""Gram polynomials (KAGN), the basis of the published ImageNet checkpoints."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .base import Basis, ones_as, register_basis


@torch.compiler.assume_constant_result  # compiled graphs take the number, not an .item() graph break
def _silu_of_one(dtype: torch.dtype) -> float:
    """SiLU(1) in ``dtype``, so that it equals F.silu(ones) bit for bit."""
    return F.silu(torch.ones((), dtype=dtype)).item()


@register_basis
class GramBasis(Basis):
    """P_0 = 1, P_1 = t, P_i = t P_{i-1} - beta(i-1, i) P_{i-2} on t = tanh(x); functions SiLU(P_i).

    beta(n, m) = w_n (m + n)(m - n) n^2 / (m^2 / (4 n^2 - 1)) with learnable ``beta_weights`` w.
    w has degree + 1 entries although only w_1 .. w_{D-1} are used: the reference checkpoints
    store that shape.
    """

    name = "gram"
    functions_by_degree = True
    extends_by_degree = True  # P_0..P_D use w_1..w_{D-1} only, as at any higher degree

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

    def with_degree(self, degree: int) -> "GramBasis":
        return self._like(GramBasis(self.channels, degree))

    def parameter_degrees(self) -> Dict[str, Tuple[Optional[int], ...]]:
        # w_n scales beta(n, n + 1), the recurrence step of P_{n+1}; w_0 and w_D are stored but unused.
        d = self.degree
        return {"beta_weights": tuple(n + 1 if 1 <= n < d else None for n in range(d + 1))}

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        polys = [ones_as(t)]
        if self.degree >= 1:
            polys.append(t)
        for i in range(2, self.degree + 1):
            beta = self.beta_factors[i - 2] * self.beta_weights[i - 1]
            polys.append(t * polys[-1] - beta * polys[-2])
        return [F.silu(p) for p in polys]

    # -- the fused node's fast path: the same recurrence, written in place, and its adjoint by hand
    def _betas(self) -> List[torch.Tensor]:
        """beta(i - 1, i) for i = 2..degree as 0-d tensors (index i - 2)."""
        return [self.beta_factors[i - 2] * self.beta_weights[i - 1] for i in range(2, self.degree + 1)]

    def _polys(self, t: torch.Tensor) -> List[torch.Tensor]:
        """[None (P_0 = 1), P_1, ..., P_D]: two passes per degree, the same roundings as :meth:`expand`."""
        polys: List = [None, t] if self.degree >= 1 else [None]
        for i, beta in enumerate(self._betas(), start=2):
            p = t * polys[-1]
            if polys[-2] is None:
                p.sub_(beta)  # beta * P_0 is beta exactly
            else:
                p.sub_(polys[-2] * beta)
            polys.append(p)
        return polys

    has_constant_function = True  # SiLU(P_0) = SiLU(1)

    def constant_value(self, dtype: torch.dtype) -> float:
        return _silu_of_one(dtype)

    def expand_into(self, t: torch.Tensor, out: torch.Tensor, skip_constant: bool = False) -> None:
        groups, skip = out.shape[1], int(skip_constant)
        if not skip:
            out[:, :, 0].fill_(self.constant_value(t.dtype))
        for i, p in enumerate(self._polys(t)[1:], start=1):
            torch.ops.aten.silu.out(p.unflatten(1, (groups, -1)), out=out[:, :, i - skip])

    def expand_backward(
        self, t: torch.Tensor, grad_out: torch.Tensor, skip_constant: bool = False
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Reverse pass of P_i = t P_{i-1} - b_i P_{i-2}: with a_i = dL/dP_i (all paths),
        a_{i-1} += t a_i, a_{i-2} -= b_i a_i, dL/dt += a_i P_{i-1}, dL/db_i = -sum(a_i P_{i-2})."""
        polys, betas, d = self._polys(t), self._betas(), self.degree
        groups, skip = grad_out.shape[1], int(skip_constant)
        grad_w = torch.zeros_like(self.beta_weights)
        if d == 0:
            return torch.zeros_like(t), {"beta_weights": grad_w}
        adj: List = [None] + [
            torch.ops.aten.silu_backward(grad_out[:, :, i - skip], polys[i].unflatten(1, (groups, -1))).flatten(1, 2)
            for i in range(1, d + 1)
        ]
        grad_t = None
        for i in range(d, 1, -1):
            a, beta = adj[i], betas[i - 2]
            before = polys[i - 2]
            grad_b = a.sum() if before is None else torch.dot(a.flatten(), before.flatten())
            grad_w[i - 1] = -self.beta_factors[i - 2] * grad_b
            adj[i - 1].addcmul_(t, a)
            if before is not None:
                adj[i - 2].sub_(a * beta)
            grad_t = a * polys[i - 1] if grad_t is None else grad_t.addcmul_(a, polys[i - 1])
        grad_t = adj[1] if grad_t is None else grad_t.add_(adj[1])
        return grad_t, {"beta_weights": grad_w}
