"""Uniform B-splines (the original KAN)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .. import cpu_kernels
from .base import Basis, register_basis, state_shape

Terms = Tuple[Tuple[float, float], ...]


def centered_bspline_terms(degree: int) -> Terms:
    """((c_k, s_k), ...) with beta(r) = sum_k c_k max(0, s_k - r)^S: the centred cardinal B-spline of
    degree S at distance r >= 0 from its centre (unit knot spacing). Of the S + 2 truncated powers of
    the textbook form only those with s_k > 0 are nonzero there, which keeps the terms small."""
    half = (degree + 1) / 2
    return tuple(((-1) ** k * math.comb(degree + 1, k) / math.factorial(degree), half - k)
                 for k in range(degree + 2) if half - k > 0)


def _power(x: torch.Tensor, n: int) -> torch.Tensor:
    """x ** n as n - 1 products: a Python loop specialises n when compiled (a symbolic exponent would
    become a general pow, several times slower)."""
    y = x
    for _ in range(n - 1):
        y = y * x
    return y


def _uniform_expand_kernel(t: torch.Tensor, out: torch.Tensor, origin: float, inv_spacing: float, degree: int,
                           terms: Terms) -> None:
    """expand_into on evenly spaced knots: function i is beta(|u - i - (S + 1) / 2|), u = (t - knot_0) / h.
    Compiled into one loop (kan_zoo.layers.cpu_kernels) that reads t once and writes each function once."""
    u = (t.unflatten(1, (out.shape[1], -1)) - origin) * inv_spacing
    functions = []
    for i in range(out.shape[2]):
        r = (u - (i + (degree + 1) / 2)).abs()
        functions.append(sum(c * _power(torch.clamp(s - r, min=0), degree) for c, s in terms))
    out.copy_(torch.stack(functions, 2))


def _uniform_backward_kernel(t: torch.Tensor, grad_out: torch.Tensor, origin: float, inv_spacing: float, degree: int,
                             terms: Terms) -> torch.Tensor:
    """dL/dt for :func:`_uniform_expand_kernel` (degree >= 2): sum_i dL/dB_i sign(d_i) beta'(|d_i|) / h."""
    u = (t.unflatten(1, (grad_out.shape[1], -1)) - origin) * inv_spacing
    grad = torch.zeros_like(u)
    for i in range(grad_out.shape[2]):
        d = u - (i + (degree + 1) / 2)
        slope = sum(-degree * c * _power(torch.clamp(s - d.abs(), min=0), degree - 1) for c, s in terms)
        grad = grad + grad_out[:, :, i] * torch.sign(d) * slope
    return (grad * inv_spacing).flatten(1, 2)


@register_basis
class BSplineBasis(Basis):
    """B-splines of order ``degree`` (S) on a uniform grid of ``grid_size`` intervals over ``grid_range``.

    Knots lo - S h, ..., hi + S h (h = (hi - lo) / grid_size); Cox-de Boor on the raw input gives
    grid_size + S functions. The knots are a buffer (``grid``) so grid refinement can move them.
    """

    name = "bspline"
    base_activation = "gelu"
    output_activation = "prelu_per_group"

    def __init__(
        self, channels: int, degree: int = 3, grid_size: int = 5, grid_range: Sequence[float] = (-1.0, 1.0)
    ) -> None:
        super().__init__(channels, degree)
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        lo, hi = (float(v) for v in grid_range)
        if not hi > lo:
            raise ValueError(f"grid_range must be increasing, got {tuple(grid_range)}")
        self.grid_size, self.grid_range = grid_size, (lo, hi)
        h = (hi - lo) / grid_size
        knots = torch.linspace(lo - degree * h, hi + degree * h, grid_size + 2 * degree + 1)
        self.register_buffer("grid", knots)

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.degree

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        g = self.grid.to(t.dtype)
        x = t.unsqueeze(-1)
        bases = ((x >= g[:-1]) & (x < g[1:])).to(t.dtype)
        for k in range(1, self.degree + 1):
            left = (x - g[: -(k + 1)]) / (g[k:-1] - g[: -(k + 1)])
            right = (g[k + 1 :] - x) / (g[k + 1 :] - g[1:-k])
            bases = left * bases[..., :-1] + right * bases[..., 1:]
        return list(bases.unbind(-1))

    # -- the fused node's fast path: Cox-de Boor in the stacked (function-major) layout, adjoint by hand
    def _levels(self, t: torch.Tensor, level: int, out: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """B_{j, level} for all j (1 <= level <= degree), each shaped like t; the last level is written
        into ``out[:, :, j]`` when given. t is (N, G, c, *spatial).

        Why this shape of loop: the trailing-function-axis layout of :meth:`expand` runs every op
        with a tiny strided inner dimension; here every op is a contiguous pass over one function.
        D_j = t - g_j is shared by all levels, and level 1 is the hat max(0, min(left, right)),
        which equals left * I_j + right * I_{j+1} on increasing knots (one of the two is <= 1 <= the other).
        """
        g = self.host_values("grid", t.dtype)  # knots (after refits: non-uniform)
        n_knots = len(g)
        diffs = [t - gj for gj in g]  # D_j
        tmp = torch.empty_like(t)
        bases: List[torch.Tensor] = []
        for j in range(n_knots - 2):  # level 1: one hat per pair of cells
            last = level == 1 and out is not None
            b = out[:, :, j] if last else torch.empty_like(t)
            torch.mul(diffs[j], 1.0 / (g[j + 1] - g[j]), out=b)
            torch.mul(diffs[j + 2], -1.0 / (g[j + 2] - g[j + 1]), out=tmp)
            torch.minimum(b, tmp, out=b)
            b.clamp_(min=0)
            bases.append(b)
        for k in range(2, level + 1):
            last = k == level and out is not None
            for j in range(n_knots - 1 - k):
                # B_{j,k} = (t - g_j) / (g_{j+k} - g_j) B_{j,k-1} + (g_{j+k+1} - t) / (g_{j+k+1} - g_{j+1}) B_{j+1,k-1};
                # in place over B_{j,k-1}, which no later j reads.
                torch.mul(diffs[j], bases[j], out=tmp).mul_(1.0 / (g[j + k] - g[j]))
                target = out[:, :, j] if last else bases[j]
                torch.addcmul(tmp, diffs[j + k + 1], bases[j + 1], value=-1.0 / (g[j + k + 1] - g[j + 1]), out=target)
                bases[j] = target
            bases.pop()
        return bases

    def _compiled_kernel_grid(self, t: torch.Tensor) -> Optional[Tuple[float, float]]:
        """(first knot, 1 / spacing) where the compiled CPU kernels apply to t: enabled, degree >= 2 (the
        closed form's derivative is continuous there), and evenly spaced knots (no grid refit moved them)."""
        if self.degree < 2 or not cpu_kernels.cpu_kernels_apply(t):
            return None
        g = self.host_values("grid", t.dtype)
        spacing = (g[-1] - g[0]) / (len(g) - 1)
        if any(abs(gj - g[0] - j * spacing) > 1e-5 * spacing for j, gj in enumerate(g)):
            return None
        return g[0], 1.0 / spacing

    def expands_in_pieces(self, t: torch.Tensor) -> bool:
        return self._compiled_kernel_grid(t) is None  # the compiled kernel has no temporaries to keep in cache

    def expand_into(self, t: torch.Tensor, out: torch.Tensor) -> None:
        grid = self._compiled_kernel_grid(t)
        if grid is not None and cpu_kernels.run_compiled(_uniform_expand_kernel, t, out, *grid, self.degree,
                                             centered_bspline_terms(self.degree))[0]:
            return
        if self.degree == 0:  # indicators only: nothing to gain over the default
            return super().expand_into(t, out)
        self._levels(t.unflatten(1, (out.shape[1], -1)), self.degree, out)

    def expand_backward(
        self, t: torch.Tensor, grad_out: torch.Tensor
    ) -> Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        """dB_{i,S}/dt = S / (g_{i+S} - g_i) B_{i,S-1} - S / (g_{i+S+1} - g_{i+1}) B_{i+1,S-1} (Cox-de Boor's
        derivative; the knots are a buffer, so t is the only input with a gradient)."""
        s = self.degree
        if s == 0:  # piecewise constant: let autograd give its zeros
            return None
        grid = self._compiled_kernel_grid(t)
        if grid is not None:
            done, grad_t = cpu_kernels.run_compiled(_uniform_backward_kernel, t, grad_out, *grid, s,
                                                    centered_bspline_terms(s))
            if done:
                return grad_t, {}
        tv = t.unflatten(1, (grad_out.shape[1], -1))
        g = self.host_values("grid", t.dtype)
        if s == 1:  # B_{j,0}: the cell indicators
            lower = [(tv >= gj).to(t.dtype) for gj in g]
            below = [lower[j] - lower[j + 1] for j in range(len(g) - 1)]
        else:
            below = self._levels(tv, s - 1)
        grad_t = torch.zeros_like(tv)
        tmp = torch.empty_like(tv)
        for i in range(self.num_functions):
            torch.mul(below[i + 1], -s / (g[i + s + 1] - g[i + 1]), out=tmp)
            tmp.add_(below[i], alpha=s / (g[i + s] - g[i]))
            grad_t.addcmul_(tmp, grad_out[:, :, i])
        return grad_t.flatten(1, 2), {}

    def checkpoint_grid_size(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
        shape = state_shape(state_dict, prefix + "grid")
        return shape[0] - 2 * self.degree - 1 if shape is not None and len(shape) == 1 else None

    def resized(self, grid_size: int) -> "BSplineBasis":
        return self._like(BSplineBasis(self.channels, self.degree, grid_size=grid_size, grid_range=self.grid_range))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid_size={self.grid_size}, grid_range={self.grid_range}"
