"""Triton kernels for the three-term-recurrence bases (gram, chebyshev, legendre, jacobi).

Imported lazily by kan_zoo.layers.triton_basis, only when a layer takes the Triton path, so that
``import kan_zoo`` never needs Triton. Every kernel is 1-D over the input u (N, C, *spatial): each
element is read once and its (base branch +) degree + 1 functions are written to, or their
gradients read from, the layer's stacked layout (N, G, F, C / G, *spatial). All arithmetic is float32
in registers whatever the storage dtype.

The backward carries the derivatives forward with the recurrence (dP_i/dt, and dP_i/dc_j for the
learnable c_j of gram) instead of walking it in reverse, so no per-degree intermediate is stored.
Triton's interpreter (TRITON_INTERPRET=1) runs these on CPU tensors: that is how CI tests them. Only
builtins of triton.language are used (tl.full, tl.reduce, not tl.zeros or tl.sum): its @jit helpers
are decorated when triton is first imported, often before a test turns the interpreter on.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # No libdevice in the interpreter, so tanh from exp: 1 - 2 / (e^2x + 1) loses relative precision
    # near 0, where the odd Taylor series (error < 1e-8 relative below |x| = 0.25) takes over.
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    # The clamp only keeps exp finite: tanh(20) is 1 in float32.
    return tl.where(tl.abs(x) < 0.25, series, 1.0 - 2.0 / (tl.exp(2.0 * tl.minimum(x, 20.0)) + 1.0))


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(tl.minimum(-x, 80.0)))  # clamped so exp stays finite; the value is ~0 there


@triton.jit
def _function(p, SILU: tl.constexpr):
    """The stacked function of polynomial value p: SiLU(p) for gram, p itself otherwise."""
    out = p
    if SILU:
        out = p * _sigmoid(p)
    return out


@triton.jit
def _silu_grad(x):
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@triton.jit
def _basis_input(u, mask_ptr, offs, live, spatial, edge, CLAMP: tl.constexpr, HAS_MASK: tl.constexpr):
    """(t, dt/du): t = tanh(u), clamped to +-edge where CLAMP, times the dropout mask where HAS_MASK."""
    th = _tanh(u)
    t = th
    dt = 1.0 - th * th
    if CLAMP:
        t = tl.minimum(tl.maximum(th, -edge), edge)
        dt = tl.where((th >= -edge) & (th <= edge), dt, 0.0)
    if HAS_MASK:
        m = tl.load(mask_ptr + offs // spatial, mask=live, other=0.0).to(tl.float32)
        t = t * m
        dt = dt * m
    return t, dt


@triton.jit
def expand_forward_kernel(
    u_ptr, mask_ptr, coef_ptr, out_ptr, numel, group_elems, spatial, edge,
    DEGREE: tl.constexpr, BASE: tl.constexpr, FIRST: tl.constexpr, SILU: tl.constexpr, CLAMP: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[.., f, ..] = function f of u. coef_ptr holds rows a, g, c of length DEGREE + 1 (index i = P_i's).
    BASE says what function 0 is: 0 none (FIRST = 0), 1 SiLU(u), 2 u itself."""
    NUM: tl.constexpr = FIRST + DEGREE + 1
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    u = tl.load(u_ptr + offs, mask=live, other=0.0).to(tl.float32)
    block = offs // group_elems  # (sample, group) index: the stacked layout repeats per block
    dst = out_ptr + block * (NUM * group_elems) + (offs - block * group_elems)
    out_ty = out_ptr.dtype.element_ty
    if BASE == 1:
        tl.store(dst, (u * _sigmoid(u)).to(out_ty), mask=live)
    if BASE == 2:
        tl.store(dst, u.to(out_ty), mask=live)
    t, dt = _basis_input(u, mask_ptr, offs, live, spatial, edge, CLAMP, HAS_MASK)
    p0 = tl.full([BLOCK], 1.0, tl.float32)
    tl.store(dst + FIRST * group_elems, _function(p0, SILU).to(out_ty), mask=live)
    if DEGREE >= 1:
        p1 = tl.load(coef_ptr + 1) * t + tl.load(coef_ptr + DEGREE + 2)
        tl.store(dst + (FIRST + 1) * group_elems, _function(p1, SILU).to(out_ty), mask=live)
        for i in tl.static_range(2, DEGREE + 1):
            a = tl.load(coef_ptr + i)
            g = tl.load(coef_ptr + (DEGREE + 1) + i)
            c = tl.load(coef_ptr + 2 * (DEGREE + 1) + i)
            p2 = (a * t + g) * p1 - c * p0
            tl.store(dst + (FIRST + i) * group_elems, _function(p2, SILU).to(out_ty), mask=live)
            p0 = p1
            p1 = p2


@triton.jit
def expand_backward_kernel(
    u_ptr, mask_ptr, coef_ptr, grad_ptr, grad_u_ptr, partial_ptr, numel, group_elems, spatial, edge,
    DEGREE: tl.constexpr, BASE: tl.constexpr, FIRST: tl.constexpr, SILU: tl.constexpr, CLAMP: tl.constexpr,
    HAS_MASK: tl.constexpr, PARAM_GRADS: tl.constexpr, PARAM_COLS: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_u from the stacked gradient; with PARAM_GRADS, also this block's sums of dL/dc_j
    (j = 2..DEGREE) into partial_ptr[program, j] (PARAM_COLS >= DEGREE + 1 columns, a power of 2)."""
    NUM: tl.constexpr = FIRST + DEGREE + 1
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    u = tl.load(u_ptr + offs, mask=live, other=0.0).to(tl.float32)
    block = offs // group_elems
    src = grad_ptr + block * (NUM * group_elems) + (offs - block * group_elems)
    grad_u = tl.full([BLOCK], 0.0, tl.float32)
    if BASE == 1:
        grad_u = tl.load(src, mask=live, other=0.0).to(tl.float32) * _silu_grad(u)
    if BASE == 2:
        grad_u = tl.load(src, mask=live, other=0.0).to(tl.float32)
    t, dt = _basis_input(u, mask_ptr, offs, live, spatial, edge, CLAMP, HAS_MASK)
    if DEGREE >= 1:
        # Forward-mode: P_i and D_i = dP_i/dt side by side; dL/dt = sum_i w_i D_i with w_i = dL/dP_i
        # (direct term only: P_i feeds the loss through its own stacked slot alone).
        # With PARAM_GRADS, column j of q holds dP_i/dc_j (zero until i = j, where it is -P_{j-2}).
        cols = tl.arange(0, PARAM_COLS)
        q0 = tl.full([BLOCK, PARAM_COLS], 0.0, tl.float32)
        q1 = tl.full([BLOCK, PARAM_COLS], 0.0, tl.float32)
        acc = tl.full([BLOCK, PARAM_COLS], 0.0, tl.float32)
        a1 = tl.load(coef_ptr + 1)
        p0 = tl.full([BLOCK], 1.0, tl.float32)
        d0 = tl.full([BLOCK], 0.0, tl.float32)
        p1 = a1 * t + tl.load(coef_ptr + DEGREE + 2)
        d1 = tl.full([BLOCK], 0.0, tl.float32) + a1
        w = tl.load(src + (FIRST + 1) * group_elems, mask=live, other=0.0).to(tl.float32)
        if SILU:
            w = w * _silu_grad(p1)
        grad_t = w * d1
        for i in tl.static_range(2, DEGREE + 1):
            a = tl.load(coef_ptr + i)
            g = tl.load(coef_ptr + (DEGREE + 1) + i)
            c = tl.load(coef_ptr + 2 * (DEGREE + 1) + i)
            lin = a * t + g
            p2 = lin * p1 - c * p0
            d2 = a * p1 + lin * d1 - c * d0
            w = tl.load(src + (FIRST + i) * group_elems, mask=live, other=0.0).to(tl.float32)
            if SILU:
                w = w * _silu_grad(p2)
            grad_t += w * d2
            if PARAM_GRADS:
                q2 = lin[:, None] * q1 - c * q0
                q2 = tl.where(cols[None, :] == i, -p0[:, None], q2)
                acc += w[:, None] * q2
                q0 = q1
                q1 = q2
            p0 = p1
            p1 = p2
            d0 = d1
            d1 = d2
        grad_u += grad_t * dt
        if PARAM_GRADS:
            tl.store(partial_ptr + tl.program_id(0) * PARAM_COLS + cols, tl.reduce(acc, 0, _add))
    tl.store(grad_u_ptr + offs, grad_u.to(grad_u_ptr.dtype.element_ty), mask=live)
