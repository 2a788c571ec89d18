"""What kan_zoo's Triton basis kernels compute, operation by operation, with float32 error bounds.

Each function mirrors one of kan_zoo/layers/kernels/_triton_kernels.py (or _triton_relu_kernels.py) on
tests/error_model.Bounded values: the exact value (float64) of what the kernel computes in exact
arithmetic, and a bound on how far its float32 result can be from it. The kernels' constants enter
as the exact values the float64 torch path uses, with the distance of their float32 copies as error.
test_triton_basis.py checks the kernels against these bounds and the exact values against float64
autograd of the torch path (so the model is the layer's math).

Import as ``from triton_kernel_model import ...`` (pytest puts each test directory on sys.path).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from error_model import EXP_BASE, Bounded, sum_bound
from kan_zoo.layers.kernels import triton_basis
from kan_zoo.layers.bases.bernstein import BernsteinBasis
from kan_zoo.layers.bases.bspline import BSplineBasis
from kan_zoo.layers.bases.gram import GramBasis
from kan_zoo.layers.bases.rbf import RBFBasis
from kan_zoo.layers.bases.relu import ReLUBasis

ERF = EXP_BASE  # erf within 4 ulp, as exp (libdevice's erff: 2 ulp; the interpreter: double erf, rounded)


def _const(exact: float, like: torch.Tensor) -> Bounded:
    """A kernel constant: exact value (as the float64 path has it), error = its float32 rounding."""
    rounded = float(torch.tensor(exact, dtype=torch.float32))
    return Bounded(torch.full_like(like, exact), torch.full_like(like, abs(rounded - exact)))


def _scalar(value: torch.Tensor, like: torch.Tensor) -> Bounded:
    """A float32 buffer or parameter the kernel reads: exact as stored."""
    return Bounded.exact(value.detach().double().cpu().expand_as(like))


def _max0(x: Bounded) -> Bounded:
    """max(x, 0): exact on its operand, 1-Lipschitz."""
    return Bounded(x.value.clamp_min(0), x.error)


def _erf(x: Bounded) -> Bounded:
    value = torch.erf(x.value)
    propagated = x.error * 2 / math.sqrt(math.pi)  # |erf'| <= 2 / sqrt(pi)
    return Bounded(value, propagated + ERF * (value.abs() + propagated))


# -- the kernels' scalar functions ---------------------------------------------------------------------
def tanh(u: torch.Tensor) -> Bounded:
    """_tanh: the odd series below |u| = 0.25, else 1 - 2 / (e^2u + 1)."""
    assert bool((u.abs() < 20).all())  # below the exp branch's clamp
    x = Bounded.exact(u)
    x2 = x * x
    c = [_const(v, x.value) for v in (1.0, -1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0)]
    series = x * (c[0] + x2 * (c[1] + x2 * (c[2] + x2 * (c[3] + x2 * c[4]))))
    one = _const(1.0, x.value)
    exp_form = one - _const(2.0, x.value) / (Bounded.exact(2.0 * u).exp() + one)  # 2u is exact
    exact = torch.tanh(x.value)
    return series.approximates(exact).where(u.abs() < 0.25, exp_form.approximates(exact))


def sigmoid(x: Bounded) -> Bounded:
    """_sigmoid: 1 / (1 + exp(min(-x, 80)))."""
    assert bool((x.error < 5).all())
    # Where x is surely below -70, the kernel's value and sigmoid(x) both lie in [0, 2 e^-70] (whether or not
    # its clamp at 80 applies); elsewhere the clamp is not reached (x's error is below 5).
    deep = -x.value - x.error > 70
    safe = Bounded(torch.where(deep, 0.0, x.value), torch.where(deep, 0.0, x.error))
    one = _const(1.0, x.value)
    s = (one / (one + (-safe).exp())).approximates(torch.sigmoid(safe.value))
    return Bounded(torch.sigmoid(x.value), torch.where(deep, 2 * math.exp(-70.0), s.error))


def silu(x: Bounded) -> Bounded:
    return x * sigmoid(x)


def silu_grad(x: Bounded) -> Bounded:
    """_silu_grad: s (1 + x (1 - s))."""
    s, one = sigmoid(x), _const(1.0, x.value)
    return s * (one + x * (one - s))


def gelu(x: Bounded) -> Bounded:
    return _const(0.5, x.value) * x * (_const(1.0, x.value) + _erf(x * _const(0.7071067811865476, x.value)))


def gelu_grad(x: Bounded) -> Bounded:
    c = lambda v: _const(v, x.value)  # noqa: E731
    gauss = (c(-0.5) * x * x).exp()
    return c(0.5) * (c(1.0) + _erf(x * c(0.7071067811865476))) + x * gauss * c(0.3989422804014327)


def base(x: Bounded, code: int) -> Bounded:
    """_base: 1 SiLU, 2 identity, 3 GELU."""
    return {1: silu, 2: lambda v: v, 3: gelu}[code](x)


def base_grad(x: Bounded, code: int) -> Bounded:
    return {1: silu_grad, 2: lambda v: _const(1.0, v.value), 3: gelu_grad}[code](x)


# -- the basis input and the families ----------------------------------------------------------------
def basis_input(basis: nn.Module, u: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[Bounded, Bounded]:
    """_basis_input: (t, dt/du) for the basis's input map, times the dropout mask."""
    _, prepare = triton_basis._family(basis)
    x = Bounded.exact(u)
    one = _const(1.0, x.value)
    t, dt = x, one
    if prepare == 1:
        t = tanh(u)
        dt = one - t * t
        edge = getattr(basis, "tanh_clamp", None)
        if edge is not None:
            e = _const(edge, x.value)
            # where t may lie on either side of the edge, dt is 1 - t^2 or 0: either
            unsure = (t.value.abs() - edge).abs() <= t.error + e.error
            outside = t.value.abs() > edge
            dt = Bounded(torch.where(outside, 0.0, dt.value),
                         torch.where(unsure, dt.value.abs() + dt.error, torch.where(outside, 0.0, dt.error)))
            t = Bounded(t.value.clamp(-edge, edge), t.error + e.error)  # clamping is 1-Lipschitz
    if prepare == 2:
        t = sigmoid(x)
        dt = t * (one - t)
    if mask is not None:
        m = Bounded.exact(mask.expand_as(u))
        t, dt = t * m, dt * m
    return t, dt


def recurrence_table(basis: nn.Module, like: torch.Tensor) -> List[Tuple[Bounded, Bounded, Bounded]]:
    """(a_i, g_i, c_i) for i = 0..degree (row 0 unused) as the kernel reads them (its float32 table, gram's
    c_i times beta_weights[i - 1]), exact values as the float64 path has them."""
    d = basis.degree
    if isinstance(basis, GramBasis):
        beta = basis.beta_weights.detach().double().cpu()
        rows = [(1.0, 0.0, 0.0), (1.0, 0.0, 0.0)] + [(1.0, 0.0, f) for f in basis.beta_factors[: max(d - 1, 0)]]
        table = [(_const(a, like), _const(g, like), _const(c, like)) for a, g, c in rows[: d + 1]]
        return [(a, g, c * Bounded.exact(beta[i - 1].expand_as(like)) if i >= 2 else c)
                for i, (a, g, c) in enumerate(table)]
    rows = [(0.0, 0.0, 0.0)] + list(basis.coefficients())
    return [(_const(a, like), _const(g, like), _const(c, like)) for a, g, c in rows[: d + 1]]


def recurrence_polys(t: Bounded, table) -> List[Bounded]:
    """_recurrence_forward: P_0 = 1, P_1 = a_1 t + g_1, P_i = (a_i t + g_i) P_{i-1} - c_i P_{i-2}."""
    polys = [_const(1.0, t.value)]
    if len(table) > 1:
        polys.append(table[1][0] * t + table[1][1])
    for a, g, c in table[2:]:
        polys.append((a * t + g) * polys[-1] - c * polys[-2])
    return polys


def bernstein_functions(t: Bounded, degree: int) -> List[Bounded]:
    """_bernstein_forward: C(D, k) t^k (1 - t)^(D - k), powers by repeated products."""
    one_minus = _const(1.0, t.value) - t
    return [_const(math.comb(degree, k), t.value) * _power(t, k) * _power(one_minus, degree - k)
            for k in range(degree + 1)]


def _power(v: Bounded, n: int) -> Bounded:
    out = _const(1.0, v.value)
    for _ in range(n):
        out = out * v
    return out


def _rbf_z(t: Bounded, basis: RBFBasis) -> List[Bounded]:
    h = _scalar(basis.inv_width, t.value)
    return [(t - _scalar(mu, t.value)) * h for mu in basis.grid]


def bspline_tile(t: Bounded, knots: torch.Tensor, level: int) -> Tuple[torch.Tensor, List[Bounded]]:
    """_bspline_cell and _bspline_levels: (cell, [column r = B_{cell - level + r, level}(t)]), by de Boor's
    triangle on the knots the element's cell reads (masked knots read 0, as the kernel's loads)."""
    k64 = knots.detach().double().cpu()
    n = k64.numel()
    cell = (t.value.unsqueeze(-1) >= k64).sum(-1) - 1  # t is exact here (no input map)
    inside = (cell >= 0) & (cell < n - 1)

    def knot(index: torch.Tensor) -> Bounded:
        valid = (index >= 0) & (index < n)
        return Bounded.exact(torch.where(valid, k64[index.clamp(0, n - 1)], 0.0))

    # An element within its error of a knot could fall in the other cell in float32: none may (the model
    # follows one cell per element; for random inputs this has probability ~1e-7 per element).
    assert not bool(((t.value.unsqueeze(-1) - k64).abs() < t.error.unsqueeze(-1)).any())
    zero = Bounded.exact(torch.zeros_like(t.value))
    tile = [Bounded.exact(inside.double())] + [zero] * level
    for k in range(1, level + 1):
        saved = zero
        for r in range(k):
            g_hi, g_lo = knot(cell + (r + 1)), knot(cell + (1 - k + r))
            span = g_hi - g_lo
            nonzero = span.value != 0  # the kernel's test is on its float32 span; the knots make it exact
            safe = Bounded(torch.where(nonzero, span.value, 1.0), torch.where(nonzero, span.error, 0.0))
            temp = tile[r] / safe
            temp = Bounded(torch.where(nonzero, temp.value, 0.0), torch.where(nonzero, temp.error, 0.0))
            tile[r] = saved + (g_hi - t) * temp
            saved = (t - g_lo) * temp
        tile[k] = saved
    return cell, tile


def _pick(tile: List[Bounded], column: torch.Tensor) -> Bounded:
    """The tile entry in the element's column (0 where none: the kernel adds a row of zeros and it)."""
    value = torch.zeros_like(tile[0].value)
    error = torch.zeros_like(value)
    for r, entry in enumerate(tile):
        value = torch.where(column == r, entry.value, value)
        error = torch.where(column == r, entry.error, error)
    return Bounded(value, error)


def bspline_functions(t: Bounded, basis: BSplineBasis) -> List[Bounded]:
    d = basis.degree
    cell, tile = bspline_tile(t, basis.grid, d)
    return [_pick(tile, j + d - cell) for j in range(basis.num_functions)]


def relu_functions(t: Bounded, basis: ReLUBasis) -> List[Bounded]:
    """relu_forward_kernel: (s relu(t - a_ci) relu(b_ci - t))^2."""
    scale = _scalar(basis.scale, t.value)
    out = []
    for low, high in _relu_phases(basis, t):
        bell = scale * _max0(t - low) * _max0(high - t)
        out.append(bell * bell)
    return out


def _relu_phases(basis: ReLUBasis, t: Bounded) -> List[Tuple[Bounded, Bounded]]:
    """(a_ci, b_ci) of each function, broadcast over t's (N, C, *spatial)."""
    shape = (1, -1) + (1,) * (t.value.dim() - 2)
    low, high = (p.detach().double().cpu() for p in (basis.phase_low, basis.phase_high))
    return [(Bounded.exact(low[:, i].reshape(shape).expand_as(t.value)),
             Bounded.exact(high[:, i].reshape(shape).expand_as(t.value))) for i in range(basis.num_functions)]


# -- one layer's node: the stacked functions forward, dL/dx and dL/du backward -------------------------
class KernelModel:
    """The Triton kernels' results for ``layer`` on its node's float32 inputs (x, u, mask)."""

    def __init__(self, layer: nn.Module, x: Optional[torch.Tensor], u: torch.Tensor,
                 mask: Optional[torch.Tensor]) -> None:
        self.layer, self.basis = layer, layer.basis
        self.x_is_u = x is None or x is u
        self.has_base = x is not None
        self.code = triton_basis._base_code(self.basis) if x is not None else 0
        u64 = u.detach().double().cpu()
        self.x = None if x is None else Bounded.exact(x.detach().double().cpu())
        self.t, self.dt = basis_input(self.basis, u64, None if mask is None else mask.detach().double().cpu())
        basis, t = self.basis, self.t
        if isinstance(basis, ReLUBasis):
            self.functions = relu_functions(t, basis)
        elif isinstance(basis, RBFBasis):
            self.functions = [(-(z * z)).exp() for z in _rbf_z(t, basis)]
        elif isinstance(basis, BSplineBasis):
            self.functions = bspline_functions(t, basis)
        elif isinstance(basis, BernsteinBasis):
            self.functions = bernstein_functions(t, basis.degree)
        else:
            self.table = recurrence_table(basis, t.value)
            self.polys = recurrence_polys(t, self.table)
            gram = isinstance(basis, GramBasis)
            self.functions = [silu(p) if gram else p for p in self.polys]

    # the stacked layout (N, G, F, C / G, *spatial), F = base + functions
    def _slots(self) -> int:
        return int(self.has_base) + len(self.functions)

    def stack(self) -> Bounded:
        """The stacked tensor the forward kernel writes, flattened as the layer's (N, G * F * C / G, ...)."""
        slots = ([base(self.x, self.code)] if self.has_base else []) + self.functions
        g = self.layer.groups

        def stacked(parts: List[torch.Tensor]) -> torch.Tensor:
            return torch.stack([p.unflatten(1, (g, -1)) for p in parts], 2).flatten(1, 3)

        return Bounded(stacked([s.value for s in slots]), stacked([s.error for s in slots]))

    def slot(self, grad_stacked: torch.Tensor, f: int) -> Bounded:
        """Slot f of a float32 stacked gradient, shaped like u."""
        grad = grad_stacked.detach().double().cpu().unflatten(1, (self.layer.groups, self._slots(), -1))
        return Bounded.exact(grad[:, :, f].flatten(1, 2))

    def backward(self, grad_stacked: torch.Tensor) -> Tuple[Optional[Bounded], Bounded]:
        """(dL/dx where x is a separate tensor, else None; dL/du) as expand_backward_kernel (or the ReLU
        kernel) computes them from this float32 stacked gradient."""
        first = int(self.has_base)
        w = [self.slot(grad_stacked, first + i) for i in range(len(self.functions))]
        grad_t = self._grad_t(w)
        grad_base = self.slot(grad_stacked, 0) * base_grad(self.x, self.code) if self.has_base else None
        if isinstance(self.basis, ReLUBasis):  # grad_t carries the factor 2 s^2 there
            scale = _scalar(self.basis.scale, self.t.value)
            grad_u = grad_t * (_const(2.0, scale.value) * scale * scale * self._mask_or_one())
        else:
            grad_u = grad_t * self.dt
        if grad_base is None:
            return None, grad_u
        if self.x_is_u:
            return None, grad_u + grad_base
        return grad_base, grad_u

    def _mask_or_one(self) -> Bounded:
        return self.dt  # ReLU's t is u times the mask: dt/du is the mask (or 1)

    def _grad_t(self, w: List[Bounded]) -> Bounded:
        basis, t = self.basis, self.t
        zero = Bounded.exact(torch.zeros_like(t.value))
        if isinstance(basis, ReLUBasis):
            grad_t = zero
            for wi, (low, high) in zip(w, _relu_phases(basis, t)):
                p, q = _max0(t - low), _max0(high - t)
                grad_t = grad_t + p * q * wi * (q - p)
            return grad_t
        if isinstance(basis, RBFBasis):
            grad_t = zero
            for wi, z in zip(w, _rbf_z(t, basis)):
                grad_t = grad_t + wi * z * (-(z * z)).exp()
            h = _scalar(basis.inv_width, t.value)
            return grad_t * (_const(-2.0, t.value) * h)
        if isinstance(basis, BSplineBasis):
            return self._bspline_grad_t(w)
        if isinstance(basis, BernsteinBasis):
            return self._bernstein_grad_t(w)
        return self._recurrence_grad_t(w)

    def _recurrence_grad_t(self, w: List[Bounded]) -> Bounded:
        """_recurrence_backward: D_0 = 0, D_1 = a_1, D_i = a_i P_{i-1} + (a_i t + g_i) D_{i-1} - c_i D_{i-2};
        dL/dt = sum_i w_i f'(P_i) D_i."""
        t, table, polys = self.t, self.table, self.polys
        gram = isinstance(self.basis, GramBasis)
        grad_t = Bounded.exact(torch.zeros_like(t.value))
        if len(table) < 2:
            return grad_t
        d0, d1 = Bounded.exact(torch.zeros_like(t.value)), table[1][0]
        weight = (lambda i: w[i] * silu_grad(polys[i])) if gram else (lambda i: w[i])
        grad_t = weight(1) * d1
        for i in range(2, len(table)):
            a, g, c = table[i]
            d2 = a * polys[i - 1] + (a * t + g) * d1 - c * d0
            grad_t = grad_t + weight(i) * d2
            d0, d1 = d1, d2
        return grad_t

    def _bernstein_grad_t(self, w: List[Bounded]) -> Bounded:
        t, d = self.t, self.basis.degree
        one_minus = _const(1.0, t.value) - t
        grad_t = Bounded.exact(torch.zeros_like(t.value))
        for k in range(d + 1):
            slope = Bounded.exact(torch.zeros_like(t.value))
            if k >= 1:
                slope = slope + _const(k, t.value) * _power(t, k - 1) * _power(one_minus, d - k)
            if k < d:
                slope = slope - _const(d - k, t.value) * _power(t, k) * _power(one_minus, d - k - 1)
            grad_t = grad_t + w[k] * _const(math.comb(d, k), t.value) * slope
        return grad_t

    def _bspline_grad_t(self, w: List[Bounded]) -> Bounded:
        basis, t = self.basis, self.t
        d = basis.degree
        grad_t = Bounded.exact(torch.zeros_like(t.value))
        if d == 0:
            return grad_t
        cell, tile = bspline_tile(t, basis.grid, d - 1)
        g = [Bounded.exact(torch.full_like(t.value, float(v))) for v in basis.grid.detach().double().cpu()]
        for j in range(basis.num_functions):
            col = j + d - 1 - cell
            slope = _const(d, t.value) * (_pick(tile, col) / (g[j + d] - g[j])
                                          - _pick(tile, col + 1) / (g[j + d + 1] - g[j + 1]))
            grad_t = grad_t + w[j] * slope
        return grad_t

    # -- gram's dL/dbeta_weights and ReLU's phase gradients: sums over elements -----------------------
    def gram_beta_gradient(self, grad_stacked: torch.Tensor) -> Bounded:
        """dL/dbeta_weights (degree + 1 entries, w_0 and w_D unused) as the PARAM_GRADS kernel sums it:
        acc_j = sum_i w_i SiLU'(P_i) q_ij per element (q_ij = dP_i/dc_j: -P_{j-2} at i = j, then the
        recurrence), added over a block (tl.reduce: Triton's interpreter adds in sequence, a GPU in a
        layout-dependent tree, at most BLOCK - 1 additions per term either way), the blocks' partials
        added by torch (programs - 1), times the constant factor of c_j."""
        d = self.basis.degree
        first = int(self.has_base)
        block = triton_basis._BLOCK_PARAM_GRADS
        depth = (block - 1) + (-(-self.t.value.numel() // block) - 1)
        zero = Bounded.exact(torch.zeros_like(self.t.value))
        value = torch.zeros(d + 1, dtype=torch.float64)
        error = torch.zeros_like(value)
        terms = self.gram_beta_terms()
        for j in range(2, d + 1):
            acc = zero
            for i in range(j, d + 1):
                slope, q = terms[i, j]
                acc = acc + self.slot(grad_stacked, first + i) * slope * q
            total = sum_bound(acc, range(acc.value.dim()), depth)
            grad = total * _const(self.basis.beta_factors[j - 2], total.value)
            value[j - 1], error[j - 1] = grad.value, grad.error
        return Bounded(value, error)

    def gram_beta_magnitude(self, grad_stacked: torch.Tensor) -> torch.Tensor:
        """sum |dL/dbeta terms| for a nonnegative stacked gradient: how far an error of that size in the
        stacked gradient can move dL/dbeta (it is linear in it)."""
        d, first = self.basis.degree, int(self.has_base)
        out = torch.zeros(d + 1, dtype=torch.float64)
        for (i, j), (slope, q) in self.gram_beta_terms().items():
            out[j - 1] += abs(self.basis.beta_factors[j - 2]) * (
                self.slot(grad_stacked, first + i).value * (slope.value * q.value).abs()).sum()
        return out

    def gram_beta_terms(self) -> Dict[Tuple[int, int], Tuple[Bounded, Bounded]]:
        """(SiLU'(P_i), q_ij) for 2 <= j <= i: the kernel multiplies function i's gradient by the first,
        then by the second, and adds the product into column j."""
        polys, table, t = self.polys, self.table, self.t
        zero = Bounded.exact(torch.zeros_like(t.value))
        q: Dict[Tuple[int, int], Bounded] = {}
        out: Dict[Tuple[int, int], Tuple[Bounded, Bounded]] = {}
        slopes = {i: silu_grad(polys[i]) for i in range(2, len(table))}
        for i in range(2, len(table)):
            c = table[i][2]
            for j in range(2, i + 1):
                q[i, j] = -polys[i - 2] if i == j else t * q[i - 1, j] - c * q.get((i - 2, j), zero)
                out[i, j] = (slopes[i], q[i, j])
        return out

    def relu_phase_gradients(self, grad_stacked: torch.Tensor) -> Tuple[Bounded, Bounded]:
        """(dL/dphase_low, dL/dphase_high), (C, F) each, as relu_backward_kernel sums them: per (sample,
        channel) row and spatial block, -2 s^2 sum(h q) and 2 s^2 sum(h p), h = p q dL/dB (at most BLOCK - 1
        additions, then one product), the partials then added by torch over samples and blocks."""
        basis, t = self.basis, self.t
        first = int(self.has_base)
        grid, block = triton_basis._relu_grid(t.value)
        depth = (block - 1) + 1 + (t.value.shape[0] * grid[1] - 1)  # block sum, the product, the partials
        scale = _scalar(basis.scale, torch.zeros((), dtype=torch.float64))
        factor = _const(2.0, scale.value) * scale * scale
        dims = [0] + list(range(2, t.value.dim()))
        lows, highs = [], []
        for i, (low, high) in enumerate(_relu_phases(basis, t)):
            p, q = _max0(t - low), _max0(high - t)
            h = p * q * self.slot(grad_stacked, first + i)
            lows.append(_scaled(sum_bound(h * q, dims, depth), -factor))
            highs.append(_scaled(sum_bound(h * p, dims, depth), factor))
        return _stacked(lows), _stacked(highs)


def _scaled(total: Bounded, factor: Bounded) -> Bounded:
    """factor * total where the product's rounding is already counted in total's error."""
    return Bounded(total.value * factor.value,
                   total.error * factor.value.abs() + (total.value.abs() + total.error) * factor.error)


def _stacked(parts: List[Bounded]) -> Bounded:
    return Bounded(torch.stack([p.value for p in parts], 1), torch.stack([p.error for p in parts], 1))
