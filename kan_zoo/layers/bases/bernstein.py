"""Bernstein polynomials (KABN)."""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from .base import Basis, ones_as, register_basis


@register_basis
class BernsteinBasis(Basis):
    """B_{k,D}(t) = C(D, k) t^k (1 - t)^(D - k) on t = sigmoid(x), k = 0..D.

    Deliberate deviation: the reference's de Casteljau loop returns all ones; this is the true basis.

    The functions of degree D are not among those of degree D + 1 (B_{k,D} = ((D + 1 - k) B_{k,D+1} +
    (k + 1) B_{k+1,D+1}) / (D + 1)), so a layer does not extend by appending functions of higher degree.
    """

    name = "bernstein"
    base_activation = "identity"
    functions_by_degree = True

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        d = self.degree
        one_minus = 1 - t
        # Powers built by repeated products: no pow() with a zero exponent and its 0 * log(0) gradient.
        t_pows = [ones_as(t)]
        u_pows = [ones_as(t)]
        for _ in range(d):
            t_pows.append(t_pows[-1] * t)
            u_pows.append(u_pows[-1] * one_minus)
        return [math.comb(d, k) * t_pows[k] * u_pows[d - k] for k in range(d + 1)]

    # -- the fused node's fast path: each function written into its slot, the derivative by hand
    def _write_basis(self, t: torch.Tensor, degree: int, slots: List[torch.Tensor]) -> None:
        """B_{k,degree}(t) into slots[k], k = 0..degree, with the same products (and roundings) as :meth:`expand`."""
        if degree == 0:
            slots[0].fill_(1)
            return
        u = torch.rsub(t, 1)
        t_pows, u_pows = [None, t], [None, u]  # index k: the k-th power (index 0, the ones, is never needed)
        for _ in range(2, degree + 1):
            t_pows.append(t_pows[-1] * t)
            u_pows.append(u_pows[-1] * u)
        slots[0].copy_(u_pows[degree])
        slots[degree].copy_(t_pows[degree])
        for k in range(1, degree):
            torch.mul(t_pows[k], math.comb(degree, k), out=slots[k]).mul_(u_pows[degree - k])

    def expand_into(self, t: torch.Tensor, out: torch.Tensor) -> None:
        tv = t.unflatten(1, (out.shape[1], -1))
        self._write_basis(tv, self.degree, [out[:, :, k] for k in range(self.degree + 1)])

    def expand_backward(self, t: torch.Tensor, grad_out: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """dB_{k,D}/dt = D (B_{k-1,D-1} - B_{k,D-1}), so dL/dt = D sum_j B_{j,D-1} (g_{j+1} - g_j) with
        g_k = dL/dB_{k,D}: the degree D - 1 basis and two passes per function."""
        d = self.degree
        if d == 0:
            return torch.zeros_like(t), {}
        tv = t.unflatten(1, (grad_out.shape[1], -1))
        lower = [torch.empty_like(tv) for _ in range(d)]
        self._write_basis(tv, d - 1, lower)
        grad_t = torch.zeros_like(tv)
        step = torch.empty_like(tv)
        for j, b in enumerate(lower):
            torch.sub(grad_out[:, :, j + 1], grad_out[:, :, j], out=step)
            grad_t.addcmul_(b, step, value=d)
        return grad_t.flatten(1, 2), {}
