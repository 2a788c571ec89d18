"""Triton kernels of ReLU-KAN layers, imported lazily like _triton_kernels (whose helpers they share).

Its phases a, b are per channel and learnable, so these kernels run on a (row = n * C + c, spatial
block) grid: each program reads one channel's phases as scalars and sums their gradients over its
block into its own slot, which the caller reduces (no atomics, deterministic).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_kernels import _add, _base, _base_grad


@triton.jit
def relu_forward_kernel(
    u_ptr, mask_ptr, low_ptr, high_ptr, scale_ptr, out_ptr, channels, spatial, group_elems,
    NFUNC: tl.constexpr, BASE: tl.constexpr, FIRST: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    """ReLU-KAN: (s relu(t - a_ci) relu(b_ci - t))^2 for program (row = n * C + c, spatial block)."""
    row = tl.program_id(0)
    s_offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = s_offs < spatial
    offs = row.to(tl.int64) * spatial + s_offs
    u = tl.load(u_ptr + offs, mask=live, other=0.0).to(tl.float32)
    block = offs // group_elems
    dst = out_ptr + block * ((FIRST + NFUNC) * group_elems) + (offs - block * group_elems)
    out_ty = out_ptr.dtype.element_ty
    if BASE != 0:
        tl.store(dst, _base(u, BASE).to(out_ty), mask=live)
    t = u
    if HAS_MASK:
        t = t * tl.load(mask_ptr + row).to(tl.float32)
    channel = row % channels
    scale = tl.load(scale_ptr).to(tl.float32)
    for i in tl.static_range(NFUNC):
        low = tl.load(low_ptr + channel * NFUNC + i).to(tl.float32)
        high = tl.load(high_ptr + channel * NFUNC + i).to(tl.float32)
        bell = scale * tl.maximum(t - low, 0.0) * tl.maximum(high - t, 0.0)
        tl.store(dst + (FIRST + i) * group_elems, (bell * bell).to(out_ty), mask=live)


@triton.jit
def relu_backward_kernel(
    u_ptr, mask_ptr, low_ptr, high_ptr, scale_ptr, grad_ptr, grad_u_ptr, partial_low_ptr, partial_high_ptr,
    channels, spatial, group_elems,
    NFUNC: tl.constexpr, BASE: tl.constexpr, FIRST: tl.constexpr, HAS_MASK: tl.constexpr,
    PARAM_GRADS: tl.constexpr, BLOCK: tl.constexpr,
):
    """B = (s P Q)^2, P = relu(t - a), Q = relu(b - t): with h = P Q dL/dB, dL/dt = 2 s^2 h (Q - P); and
    this program's sums of dL/da = -2 s^2 h Q, dL/db = 2 s^2 h P into partial_*[row, block, i]."""
    row = tl.program_id(0)
    s_block = tl.program_id(1)
    s_offs = s_block * BLOCK + tl.arange(0, BLOCK)
    live = s_offs < spatial
    offs = row.to(tl.int64) * spatial + s_offs
    u = tl.load(u_ptr + offs, mask=live, other=0.0).to(tl.float32)
    block = offs // group_elems
    src = grad_ptr + block * ((FIRST + NFUNC) * group_elems) + (offs - block * group_elems)
    grad_u = tl.full([BLOCK], 0.0, tl.float32)
    if BASE != 0:
        grad_u = tl.load(src, mask=live, other=0.0).to(tl.float32) * _base_grad(u, BASE)
    t = u
    m = 1.0
    if HAS_MASK:
        m = tl.load(mask_ptr + row).to(tl.float32)
        t = t * m
    channel = row % channels
    scale = tl.load(scale_ptr).to(tl.float32)
    factor = 2.0 * scale * scale
    grad_t = tl.full([BLOCK], 0.0, tl.float32)
    partial = (row * tl.num_programs(1) + s_block) * NFUNC
    for i in tl.static_range(NFUNC):
        low = tl.load(low_ptr + channel * NFUNC + i).to(tl.float32)
        high = tl.load(high_ptr + channel * NFUNC + i).to(tl.float32)
        p = tl.maximum(t - low, 0.0)
        q = tl.maximum(high - t, 0.0)
        h = p * q * tl.load(src + (FIRST + i) * group_elems, mask=live, other=0.0).to(tl.float32)
        grad_t += h * (q - p)
        if PARAM_GRADS:
            tl.store(partial_low_ptr + partial + i, -factor * tl.reduce(h * q, 0, _add))
            tl.store(partial_high_ptr + partial + i, factor * tl.reduce(h * p, 0, _add))
    grad_u += grad_t * (factor * m)
    tl.store(grad_u_ptr + offs, grad_u.to(grad_u_ptr.dtype.element_ty), mask=live)
