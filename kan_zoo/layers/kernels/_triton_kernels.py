"""Triton kernels for the basis expansion of every separable basis (all but wavelet).

Imported lazily by kan_zoo.layers.kernels.triton_basis, only when a layer takes the Triton path, so that
``import kan_zoo`` never needs Triton. Every kernel is 1-D over the input u (N, C, *spatial): each
element is read once and its (base branch +) degree + 1 functions are written to, or their
gradients read from, the layer's stacked layout (N, G, F, C / G, *spatial). All arithmetic is float32
in registers whatever the storage dtype.

One forward and one backward kernel serve the families whose parameters are shared by all channels
(FAMILY: 0 three-term recurrence, 1 Bernstein, 2 Gaussian RBF, 3 B-spline); constexpr switches pick
the family, the input map (PREPARE: 0 none, 1 tanh, 2 sigmoid), the base branch (BASE: 0 none, 1 SiLU,
2 identity, 3 GELU) and the dropout mask, so each layer compiles to straight-line code. ReLU-KAN,
whose phases are per channel and learnable, has its own pair (_triton_relu_kernels.py). The
recurrence's backward carries the derivatives forward with it
(dP_i/dt, and dP_i/dc_j for gram's learnable c_j) instead of walking it in reverse, so no per-degree
intermediate is stored.
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
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    return 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def _base(x, BASE: tl.constexpr):
    """The base branch's activation: 1 SiLU, 2 identity, 3 GELU."""
    out = x
    if BASE == 1:
        out = x * _sigmoid(x)
    if BASE == 3:
        out = _gelu(x)
    return out


@triton.jit
def _base_grad(x, BASE: tl.constexpr):
    out = tl.full(x.shape, 1.0, tl.float32)
    if BASE == 1:
        out = _silu_grad(x)
    if BASE == 3:
        out = _gelu_grad(x)
    return out


@triton.jit
def _basis_input(u, mask_ptr, offs, live, spatial, edge, PREPARE: tl.constexpr, CLAMP: tl.constexpr,
                 HAS_MASK: tl.constexpr):
    """(t, dt/du): t = prepare(u) (identity, tanh or sigmoid; tanh clamped to +-edge where CLAMP),
    times the dropout mask where HAS_MASK."""
    t = u
    dt = tl.full(u.shape, 1.0, tl.float32)
    if PREPARE == 1:
        t = _tanh(u)
        dt = 1.0 - t * t
        if CLAMP:
            dt = tl.where((t >= -edge) & (t <= edge), dt, 0.0)
            t = tl.minimum(tl.maximum(t, -edge), edge)
    if PREPARE == 2:
        t = _sigmoid(u)
        dt = t * (1.0 - t)
    if HAS_MASK:
        m = tl.load(mask_ptr + offs // spatial, mask=live, other=0.0).to(tl.float32)
        t = t * m
        dt = dt * m
    return t, dt


@triton.jit
def _power(v, N: tl.constexpr):
    """v ** N by repeated products (N >= 0 a constant), as the torch path builds its powers."""
    out = tl.full(v.shape, 1.0, tl.float32)
    for _ in tl.static_range(N):
        out = out * v
    return out


@triton.jit
def _recurrence_c(coef_ptr, beta_ptr, i: tl.constexpr, DEGREE: tl.constexpr, LEARNED_C: tl.constexpr):
    """c_i: the table's value, times gram's learnable beta_weights[i - 1] where LEARNED_C (read on the
    device, so a step costs no extra torch op to combine them)."""
    c = tl.load(coef_ptr + 2 * (DEGREE + 1) + i)
    if LEARNED_C:
        c = c * tl.load(beta_ptr + i - 1).to(tl.float32)
    return c


@triton.jit
def _recurrence_forward(t, coef_ptr, beta_ptr, dst, step, live, out_ty, DEGREE: tl.constexpr, SILU: tl.constexpr,
                        LEARNED_C: tl.constexpr):
    """P_0 = 1, P_1 = a_1 t + g_1, P_i = (a_i t + g_i) P_{i-1} - c_i P_{i-2}; stores f(P_i) at dst + i * step."""
    p0 = tl.full(t.shape, 1.0, tl.float32)
    tl.store(dst, _function(p0, SILU).to(out_ty), mask=live)
    if DEGREE >= 1:
        p1 = tl.load(coef_ptr + 1) * t + tl.load(coef_ptr + DEGREE + 2)
        tl.store(dst + step, _function(p1, SILU).to(out_ty), mask=live)
        for i in tl.static_range(2, DEGREE + 1):
            a = tl.load(coef_ptr + i)
            g = tl.load(coef_ptr + (DEGREE + 1) + i)
            c = _recurrence_c(coef_ptr, beta_ptr, i, DEGREE, LEARNED_C)
            p2 = (a * t + g) * p1 - c * p0
            tl.store(dst + i * step, _function(p2, SILU).to(out_ty), mask=live)
            p0 = p1
            p1 = p2


@triton.jit
def _recurrence_backward(t, coef_ptr, beta_ptr, src, step, live, partial_ptr, DEGREE: tl.constexpr,
                         SILU: tl.constexpr, LEARNED_C: tl.constexpr, PARAM_GRADS: tl.constexpr,
                         PARAM_COLS: tl.constexpr, BLOCK: tl.constexpr):
    """dL/dt from the functions' gradients at src + i * step. Forward mode: P_i and D_i = dP_i/dt side by
    side, dL/dt = sum_i w_i D_i with w_i = dL/dP_i (P_i reaches the loss through its own slot only).
    With PARAM_GRADS, column j of q holds dP_i/dc_j (zero until i = j, where it is -P_{j-2}), and this
    block's sums of dL/dc_j go to partial_ptr[program, j]."""
    grad_t = tl.full(t.shape, 0.0, tl.float32)
    if DEGREE >= 1:
        cols = tl.arange(0, PARAM_COLS)
        q0 = tl.full([BLOCK, PARAM_COLS], 0.0, tl.float32)
        q1 = tl.full([BLOCK, PARAM_COLS], 0.0, tl.float32)
        acc = tl.full([BLOCK, PARAM_COLS], 0.0, tl.float32)
        a1 = tl.load(coef_ptr + 1)
        p0 = tl.full(t.shape, 1.0, tl.float32)
        d0 = tl.full(t.shape, 0.0, tl.float32)
        p1 = a1 * t + tl.load(coef_ptr + DEGREE + 2)
        d1 = tl.full(t.shape, 0.0, tl.float32) + a1
        w = tl.load(src + step, mask=live, other=0.0).to(tl.float32)
        if SILU:
            w = w * _silu_grad(p1)
        grad_t = w * d1
        for i in tl.static_range(2, DEGREE + 1):
            a = tl.load(coef_ptr + i)
            g = tl.load(coef_ptr + (DEGREE + 1) + i)
            c = _recurrence_c(coef_ptr, beta_ptr, i, DEGREE, LEARNED_C)
            lin = a * t + g
            p2 = lin * p1 - c * p0
            d2 = a * p1 + lin * d1 - c * d0
            w = tl.load(src + i * step, mask=live, other=0.0).to(tl.float32)
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
        if PARAM_GRADS:
            tl.store(partial_ptr + tl.program_id(0) * PARAM_COLS + cols, tl.reduce(acc, 0, _add))
    return grad_t


@triton.jit
def _bernstein_forward(t, coef_ptr, dst, step, live, out_ty, DEGREE: tl.constexpr):
    """B_k = C(D, k) t^k (1 - t)^(D - k), k = 0..D; coef_ptr[k] = C(D, k)."""
    one_minus = 1.0 - t
    for k in tl.static_range(DEGREE + 1):
        b = tl.load(coef_ptr + k) * _power(t, k) * _power(one_minus, DEGREE - k)
        tl.store(dst + k * step, b.to(out_ty), mask=live)


@triton.jit
def _bernstein_backward(t, coef_ptr, src, step, live, DEGREE: tl.constexpr):
    """dB_k/dt = C(D, k) (k t^(k-1) (1 - t)^(D-k) - (D - k) t^k (1 - t)^(D-k-1))."""
    one_minus = 1.0 - t
    grad_t = tl.full(t.shape, 0.0, tl.float32)
    for k in tl.static_range(DEGREE + 1):
        slope = tl.full(t.shape, 0.0, tl.float32)
        if k >= 1:
            slope += k * _power(t, k - 1) * _power(one_minus, DEGREE - k)
        if k < DEGREE:
            slope -= (DEGREE - k) * _power(t, k) * _power(one_minus, DEGREE - k - 1)
        w = tl.load(src + k * step, mask=live, other=0.0).to(tl.float32)
        grad_t += w * tl.load(coef_ptr + k) * slope
    return grad_t


@triton.jit
def _rbf_forward(t, coef_ptr, dst, step, live, out_ty, NFUNC: tl.constexpr):
    """exp(-((t - mu_i) h)^2); coef_ptr holds mu_0..mu_{NFUNC-1} then h (the inverse width)."""
    h = tl.load(coef_ptr + NFUNC)
    for i in tl.static_range(NFUNC):
        z = (t - tl.load(coef_ptr + i)) * h
        tl.store(dst + i * step, tl.exp(-(z * z)).to(out_ty), mask=live)


@triton.jit
def _rbf_backward(t, coef_ptr, src, step, live, NFUNC: tl.constexpr):
    """d/dt exp(-z_i^2) = -2 h z_i exp(-z_i^2)."""
    h = tl.load(coef_ptr + NFUNC)
    grad_t = tl.full(t.shape, 0.0, tl.float32)
    for i in tl.static_range(NFUNC):
        z = (t - tl.load(coef_ptr + i)) * h
        w = tl.load(src + i * step, mask=live, other=0.0).to(tl.float32)
        grad_t += w * z * tl.exp(-(z * z))
    return grad_t * (-2.0 * h)


@triton.jit
def _bspline_cell(t, knots_ptr, NKNOTS: tl.constexpr):
    """The knot interval of t: g_cell <= t < g_cell+1 (-1 below the first knot, NKNOTS - 1 from the last)."""
    cell = tl.full(t.shape, -1, tl.int32)
    for i in tl.static_range(NKNOTS):
        cell += (t >= tl.load(knots_ptr + i)).to(tl.int32)
    return cell


@triton.jit
def _bspline_levels(t, cell, knots_ptr, live, LEVEL: tl.constexpr, NKNOTS: tl.constexpr, COLS: tl.constexpr):
    """The LEVEL + 1 B-splines of order LEVEL that can be nonzero on t's cell, as a (BLOCK, COLS) tile whose
    column r is B_{cell - LEVEL + r, LEVEL}(t): de Boor's triangle (The NURBS Book, A2.2). Entries of
    nonexistent functions (index < 0) read masked knots and only ever feed each other."""
    cols = tl.arange(0, COLS)[None, :]
    inside = (cell >= 0) & (cell < NKNOTS - 1)
    tile = tl.where((cols == 0) & inside[:, None], 1.0, 0.0)
    for k in tl.static_range(1, LEVEL + 1):
        saved = tl.full(t.shape, 0.0, tl.float32)
        for r in tl.static_range(k):
            old = tl.reduce(tl.where(cols == r, tile, 0.0), 1, _add)  # B_{cell - k + 1 + r, k - 1}
            hi = cell + (r + 1)
            lo = cell + (1 - k + r)
            g_hi = tl.load(knots_ptr + hi, mask=live & (hi >= 0) & (hi < NKNOTS), other=0.0)
            g_lo = tl.load(knots_ptr + lo, mask=live & (lo >= 0) & (lo < NKNOTS), other=0.0)
            span = g_hi - g_lo
            temp = tl.where(span != 0.0, old / tl.where(span != 0.0, span, 1.0), 0.0)
            tile = tl.where(cols == r, (saved + (g_hi - t) * temp)[:, None], tile)
            saved = (t - g_lo) * temp
        tile = tl.where(cols == k, saved[:, None], tile)
    return tile


@triton.jit
def _bspline_forward(t, knots_ptr, dst, step, live, out_ty, DEGREE: tl.constexpr, NFUNC: tl.constexpr,
                     COLS: tl.constexpr):
    """B_{j, DEGREE}(t), j = 0..NFUNC - 1, on the NFUNC + DEGREE + 1 knots at knots_ptr."""
    cell = _bspline_cell(t, knots_ptr, NFUNC + DEGREE + 1)
    tile = _bspline_levels(t, cell, knots_ptr, live, DEGREE, NFUNC + DEGREE + 1, COLS)
    cols = tl.arange(0, COLS)[None, :]
    for j in tl.static_range(NFUNC):
        b = tl.reduce(tl.where(cols == (j + DEGREE - cell)[:, None], tile, 0.0), 1, _add)
        tl.store(dst + j * step, b.to(out_ty), mask=live)


@triton.jit
def _bspline_backward(t, knots_ptr, src, step, live, DEGREE: tl.constexpr, NFUNC: tl.constexpr, COLS: tl.constexpr):
    """dB_{j,S}/dt = S B_{j,S-1} / (g_{j+S} - g_j) - S B_{j+1,S-1} / (g_{j+S+1} - g_{j+1})."""
    grad_t = tl.full(t.shape, 0.0, tl.float32)
    if DEGREE >= 1:
        cell = _bspline_cell(t, knots_ptr, NFUNC + DEGREE + 1)
        tile = _bspline_levels(t, cell, knots_ptr, live, DEGREE - 1, NFUNC + DEGREE + 1, COLS)
        cols = tl.arange(0, COLS)[None, :]
        for j in tl.static_range(NFUNC):
            col = (j + DEGREE - 1 - cell)[:, None]
            b_j = tl.reduce(tl.where(cols == col, tile, 0.0), 1, _add)
            b_next = tl.reduce(tl.where(cols == col + 1, tile, 0.0), 1, _add)
            g_j = tl.load(knots_ptr + j)
            g_j1 = tl.load(knots_ptr + j + 1)
            slope = DEGREE * (b_j / (tl.load(knots_ptr + j + DEGREE) - g_j)
                              - b_next / (tl.load(knots_ptr + j + DEGREE + 1) - g_j1))
            grad_t += tl.load(src + j * step, mask=live, other=0.0).to(tl.float32) * slope
    return grad_t


@triton.jit
def expand_forward_kernel(
    x_ptr, u_ptr, mask_ptr, coef_ptr, beta_ptr, out_ptr, numel, group_elems, spatial, edge,
    FAMILY: tl.constexpr, NFUNC: tl.constexpr, BASE: tl.constexpr, FIRST: tl.constexpr, SAME_INPUT: tl.constexpr,
    PREPARE: tl.constexpr, SILU: tl.constexpr, LEARNED_C: tl.constexpr, CLAMP: tl.constexpr, HAS_MASK: tl.constexpr,
    DEGREE: tl.constexpr, COLS: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[.., f, ..] = function f: the base branch of x (if BASE), then the NFUNC functions of u."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    u = tl.load(u_ptr + offs, mask=live, other=0.0).to(tl.float32)
    block = offs // group_elems  # (sample, group) index: the stacked layout repeats per block
    dst = out_ptr + block * ((FIRST + NFUNC) * group_elems) + (offs - block * group_elems)
    out_ty = out_ptr.dtype.element_ty
    if BASE != 0:
        x = u
        if SAME_INPUT == 0:
            x = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
        tl.store(dst, _base(x, BASE).to(out_ty), mask=live)
    t, dt = _basis_input(u, mask_ptr, offs, live, spatial, edge, PREPARE, CLAMP, HAS_MASK)
    dst = dst + FIRST * group_elems
    if FAMILY == 0:
        _recurrence_forward(t, coef_ptr, beta_ptr, dst, group_elems, live, out_ty, NFUNC - 1, SILU, LEARNED_C)
    if FAMILY == 1:
        _bernstein_forward(t, coef_ptr, dst, group_elems, live, out_ty, NFUNC - 1)
    if FAMILY == 2:
        _rbf_forward(t, coef_ptr, dst, group_elems, live, out_ty, NFUNC)
    if FAMILY == 3:
        _bspline_forward(t, coef_ptr, dst, group_elems, live, out_ty, DEGREE, NFUNC, COLS)


@triton.jit
def expand_backward_kernel(
    x_ptr, u_ptr, mask_ptr, coef_ptr, beta_ptr, grad_ptr, grad_x_ptr, grad_u_ptr, partial_ptr,
    numel, group_elems, spatial, edge,
    FAMILY: tl.constexpr, NFUNC: tl.constexpr, BASE: tl.constexpr, FIRST: tl.constexpr, SAME_INPUT: tl.constexpr,
    PREPARE: tl.constexpr, SILU: tl.constexpr, LEARNED_C: tl.constexpr, CLAMP: tl.constexpr, HAS_MASK: tl.constexpr,
    DEGREE: tl.constexpr, COLS: tl.constexpr, PARAM_GRADS: tl.constexpr, PARAM_COLS: tl.constexpr, BLOCK: tl.constexpr,
):
    """dL/du (plus the base branch's dL/dx, into grad_x_ptr unless SAME_INPUT, where it adds to
    dL/du) from the stacked gradient; with PARAM_GRADS, gram's per-block dL/dc_j into partial_ptr."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    u = tl.load(u_ptr + offs, mask=live, other=0.0).to(tl.float32)
    block = offs // group_elems
    src = grad_ptr + block * ((FIRST + NFUNC) * group_elems) + (offs - block * group_elems)
    grad_base = tl.full([BLOCK], 0.0, tl.float32)
    if BASE != 0:
        x = u
        if SAME_INPUT == 0:
            x = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
        grad_base = tl.load(src, mask=live, other=0.0).to(tl.float32) * _base_grad(x, BASE)
    t, dt = _basis_input(u, mask_ptr, offs, live, spatial, edge, PREPARE, CLAMP, HAS_MASK)
    src = src + FIRST * group_elems
    grad_t = tl.full([BLOCK], 0.0, tl.float32)
    if FAMILY == 0:
        grad_t = _recurrence_backward(t, coef_ptr, beta_ptr, src, group_elems, live, partial_ptr, NFUNC - 1, SILU,
                                      LEARNED_C, PARAM_GRADS, PARAM_COLS, BLOCK)
    if FAMILY == 1:
        grad_t = _bernstein_backward(t, coef_ptr, src, group_elems, live, NFUNC - 1)
    if FAMILY == 2:
        grad_t = _rbf_backward(t, coef_ptr, src, group_elems, live, NFUNC)
    if FAMILY == 3:
        grad_t = _bspline_backward(t, coef_ptr, src, group_elems, live, DEGREE, NFUNC, COLS)
    grad_u = grad_t * dt
    if SAME_INPUT:
        grad_u += grad_base
    elif BASE != 0:
        tl.store(grad_x_ptr + offs, grad_base.to(grad_x_ptr.dtype.element_ty), mask=live)
    tl.store(grad_u_ptr + offs, grad_u.to(grad_u_ptr.dtype.element_ty), mask=live)
