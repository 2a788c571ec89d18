"""A float32 rounding-error model for tests that check a float32 computation against float64.

Tolerances in this suite come from here, not from what one machine happened to measure. The model
is the standard one (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., ch. 2-4): a
float32 operation returns the exact result of its operands times (1 + delta), |delta| <= U = 2**-24,
and a sum or dot product of n terms in any order is off by at most gamma(n) times the sum of the
terms' absolute values. A :class:`Bounded` carries a quantity's exact value (float64) and a bound on
how far the float32 computation of it can be, through each operation (running error analysis), so
the bound holds whatever order, FMA contraction or device: contraction only skips roundings.

Import as ``from error_model import ...`` (pytest puts ``tests/`` on sys.path).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

U = 2.0 ** -24  # float32 unit roundoff
U64 = 2.0 ** -53
# Divisions: Triton on CUDA divides float32 with div.full.f32, within 2 ulp (4 U relative).
DIV = 4 * U
# exp: within 4 ulp (8 U) of exp(x) as rounded, numpy's and CUDA's float32 exp alike, plus the error of
# forming the argument of CUDA's ex2.approx (x * log2(e), rounded: 2 |x| U relative to the result).
EXP_BASE, EXP_PER_UNIT = 8 * U, 2 * U


def gamma(n: int, u: float = U) -> float:
    """Bound on the relative error of a sum (or dot product) of n terms, any order, in units of sum |terms|."""
    return n * u / (1 - n * u)


class Bounded:
    """A float32 quantity: ``value`` its exact value (float64, elementwise), ``error`` a bound on
    |float32 result - value|. Operators follow the kernel's operations one for one."""

    def __init__(self, value: torch.Tensor, error: torch.Tensor) -> None:
        self.value, self.error = value, error

    @staticmethod
    def exact(value: torch.Tensor) -> "Bounded":
        """A float32 input (no error of its own), as float64."""
        return Bounded(value.double(), torch.zeros_like(value, dtype=torch.float64))

    @staticmethod
    def literal(c: float, like: torch.Tensor) -> "Bounded":
        """A constant of the kernel (a Python float it rounds to float32)."""
        error = 0.0 if float(torch.tensor(c, dtype=torch.float32)) == c else abs(c) * (U + U64)
        return Bounded(torch.full_like(like, c), torch.full_like(like, error))

    def _rounded(self, value: torch.Tensor, propagated: torch.Tensor, rel: float = U) -> "Bounded":
        return Bounded(value, propagated + rel * (value.abs() + propagated))

    def _sum(self, other: "Bounded", value: torch.Tensor) -> "Bounded":
        # fl(a + b) is no further from a + b than either float operand is from it (|b| resp. |a|)
        propagated = self.error + other.error
        rounding = torch.minimum(U * (value.abs() + propagated),
                                 torch.minimum(self.value.abs() + self.error, other.value.abs() + other.error))
        return Bounded(value, propagated + rounding)

    def __add__(self, other: "Bounded") -> "Bounded":
        return self._sum(other, self.value + other.value)

    def __sub__(self, other: "Bounded") -> "Bounded":
        return self._sum(other, self.value - other.value)

    def __neg__(self) -> "Bounded":
        return Bounded(-self.value, self.error)

    def __mul__(self, other: "Bounded") -> "Bounded":
        propagated = self.value.abs() * other.error + other.value.abs() * self.error + self.error * other.error
        return self._rounded(self.value * other.value, propagated)

    def __truediv__(self, other: "Bounded") -> "Bounded":
        low = other.value.abs() - other.error
        assert bool((low > 0).all()), "divisor not bounded away from 0"
        propagated = (self.error * other.value.abs() + self.value.abs() * other.error) / (other.value.abs() * low)
        return self._rounded(self.value / other.value, propagated, DIV)

    def exp(self) -> "Bounded":
        value = self.value.exp()
        propagated = value * torch.expm1(self.error)
        rel = EXP_BASE + EXP_PER_UNIT * (self.value.abs() + self.error)
        return Bounded(value, propagated + rel * (value + propagated))

    def where(self, condition: torch.Tensor, other: "Bounded") -> "Bounded":
        return Bounded(torch.where(condition, self.value, other.value), torch.where(condition, self.error, other.error))

    def to_double(self) -> "Bounded":
        return Bounded(self.value.double(), self.error.double())

    def approximates(self, exact: torch.Tensor) -> "Bounded":
        """The same computation seen as approximating ``exact`` (a formula or series for it): the
        difference joins the error bound."""
        return Bounded(exact, self.error + (self.value - exact).abs())


def sum_bound(terms: Bounded, dims: Sequence[int], depth: int) -> Bounded:
    """float32 sum over ``dims`` of computed terms, in any order where no term passes through more than
    ``depth`` additions: |error| <= sum(e) + gamma(depth) * (sum |terms| + sum(e))."""
    dims = tuple(dims)
    error = terms.error.sum(dims)
    return Bounded(terms.value.sum(dims), error + gamma(depth) * (terms.value.abs().sum(dims) + error))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}
_CONV_WEIGHT = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}
# The convolution bounds hold for direct and GEMM algorithms (sums of the same products, in any order, in
# float32), not for Winograd or FFT ones: on CUDA, tests that use them run with cuDNN off. weight_rel:
# the relative rounding of the weight operand (bfloat16 under autocast: 2**-8), out_rel: of the result.


def _bounded(t) -> Bounded:
    return t if isinstance(t, Bounded) else Bounded.exact(t.detach().cpu())


def _product_sum_bound(apply, a: Bounded, b_abs: torch.Tensor, b_rel: float, terms: int,
                       out_rel: float) -> torch.Tensor:
    """Bound for a bilinear sum of products apply(a, b) (a conv) with a computed (|error| <= a.error) and
    b rounded by b_rel: the errors carried, gamma(terms) for the float32 sums, out_rel for the result."""
    size = apply(a.value.abs() + a.error, b_abs)
    carried = apply(a.error, b_abs) + b_rel * size
    summed = carried + gamma(terms) * (1 + b_rel) * size
    return summed + out_rel * ((1 + b_rel) * size + summed)


def conv_output_bound(inputs: Bounded, weight: torch.Tensor, stride, padding, dilation, groups: int,
                      weight_rel: float = 0.0, out_rel: float = 0.0) -> torch.Tensor:
    """Elementwise bound on |conv(computed inputs, W) - conv(exact inputs, W)|, each output a sum of
    K = (C_in / groups) * prod(kernel) products."""
    w = weight.detach().double().cpu().abs()
    conv = _CONV[w.dim() - 2]
    return _product_sum_bound(lambda a, b: conv(a, b, None, stride, padding, dilation, groups), inputs, w,
                              weight_rel, w[0].numel(), out_rel)


def conv_input_grad_bound(grad_out, weight: torch.Tensor, input_shape: Sequence[int], stride, padding,
                          dilation, groups: int, weight_rel: float = 0.0, out_rel: float = 0.0) -> torch.Tensor:
    """Elementwise bound on the error of dL/d(conv input) from dL/dy (a float32 tensor, or Bounded),
    each entry a sum of at most (C_out / groups) * prod(kernel) products."""
    w = weight.detach().double().cpu().abs()
    conv_input = _CONV_INPUT[w.dim() - 2]
    return _product_sum_bound(lambda g, b: conv_input(list(input_shape), b, g, stride, padding, dilation, groups),
                              _bounded(grad_out).to_double(), w, weight_rel,
                              weight.shape[0] // groups * weight[0, 0].numel(), out_rel)


def conv_weight_grad_bound(grad_out, inputs: Bounded, weight_shape: Sequence[int], stride, padding, dilation,
                           groups: int, out_rel: float = 0.0) -> torch.Tensor:
    """Elementwise bound on the error of dL/dW from dL/dy (a float32 tensor, or Bounded) and computed
    inputs, each entry a sum of N * prod(output spatial) products."""
    g = _bounded(grad_out).to_double()
    conv_weight = _CONV_WEIGHT[g.value.dim() - 2]

    def apply(a, b):
        return conv_weight(a, list(weight_shape), b, stride, padding, dilation, groups)

    terms = g.value.shape[0] * g.value[0, 0].numel()
    size = apply(inputs.value.abs() + inputs.error, g.value.abs() + g.error)
    carried = apply(inputs.error, g.value.abs() + g.error) + apply(inputs.value.abs(), g.error)
    summed = carried + gamma(terms) * size
    return summed + out_rel * (size + summed)


__all__ = ["U", "gamma", "Bounded", "sum_bound", "conv_output_bound", "conv_input_grad_bound",
           "conv_weight_grad_bound"]
