"""The wavelet (WavKAN) branch as one autograd node that never builds the whole wavelet tensor.

Why: the wavelet basis is not separable. psi((x_j - tau_oj) / s_oj) exists for every (output o,
input j) pair, so the plain path materialises (C_out / groups) x the input, keeps it for backward and
walks it with a dozen elementwise passes each way: 5 s per training step for a 64 -> 64 layer at
56x56, batch 8, on two cores (105x the floor), and 129x a plain conv's activations.

This node works in chunks of (outputs of a group) x (positions) sized to stay in cache:
  * forward: psi of the chunk, then ONE batched matmul contracts it with each output's kernel taps,
    T[o, k, p] = sum_j w[o, j, k] psi_oj(x_j[p]), at input resolution; then each output position
    adds tap k read at kernel offset k (stride, padding and dilation as the layer's conv) by sliced
    adds, which is that convolution without its multiplications. T has K / (C_in / groups) of psi's
    size (K = kernel taps), so it is cheap to hold whole.
  * backward: the same chunks recomputed, psi'(z) in closed form where the wavelet has one
    (autograd on the chunk otherwise); weight, scale, translation and input gradients are reduced
    per chunk. The node keeps only its input.
On the CPU the chunk work runs as C kernels (.native_kernels) for the wavelets that have one (mexican
hat, derivative of Gaussian), else as torch.compile kernels where those are switched on (.cpu_kernels),
else as eager ops. Under autocast psi stays in full precision and the matmuls run in the autocast dtype,
as the plain ops' convolution would. torch.compile calls the node outside the graph (.dispatch); double
backward replays the plain ops (kan_zoo.layers.bases.wavelet.wavelet_conv).
"""
from __future__ import annotations

import itertools
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from ..bases.wavelet import MEXICAN_HAT_SCALE, ChunkFunction, wavelet_conv
from . import cpu_kernels, native_kernels
from .fused import grads_where_needed

__all__ = ["WaveletConvFunction", "convolve_chunked"]

# Elements of one chunk of z (and of each temporary like it). CPU: 2 MiB per temporary keeps a
# chunk's passes in cache and amortises the per-op overhead (64 -> 64 channels, 56x56, batch 8 on
# 2 cores, training step: 2^17 660 ms, 2^18 550, 2^19 510, 2^20 513). GPUs: bound the transient
# memory (64 MiB per temporary) while keeping launches few.
_CHUNK_ELEMENTS = {"cpu": 1 << 19}
_DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _chunks(groups: int, outputs: int, inputs: int, positions: int, budget: int) -> Iterator[Tuple[int, slice, slice]]:
    """(group, output slice, position slice) covering every output of every group; a chunk of z has
    at most ``budget`` elements unless one output at one position is already more."""
    per_output = inputs * positions
    if per_output == 0:  # an empty batch: nothing to compute
        return
    if per_output <= budget:
        out_step, pos_step = max(1, min(outputs, budget // per_output)), positions
    else:
        out_step, pos_step = 1, max(1, budget // inputs)
    for g in range(groups):
        for o in range(g * outputs, (g + 1) * outputs, out_step):
            for p in range(0, positions, pos_step):
                yield g, slice(o, min(o + out_step, (g + 1) * outputs)), slice(p, min(p + pos_step, positions))


def _tap_windows(layer, in_spatial: Sequence[int]) -> Tuple[Tuple[int, ...], List[Tuple[int, tuple, tuple]]]:
    """The layer's output size, and for every kernel tap k (row-major, as weight.flatten(2)) whose
    window meets the input: (k, input slices, output slices) with y[out] += T_k[in] placing tap k.

    Output p of a dimension reads input p * stride + i * dilation - padding for kernel index i."""
    out_spatial, per_dim = [], []
    for size, k, s, d, pad in zip(in_spatial, layer.kernel_size, layer.stride, layer.dilation, layer.numeric_padding):
        out_size = (size + 2 * pad - d * (k - 1) - 1) // s + 1
        windows = []
        for i in range(k):
            offset = i * d - pad
            lo, hi = max(0, -(offset // s)), min(out_size, (size - 1 - offset) // s + 1)
            windows.append((slice(lo * s + offset, (hi - 1) * s + offset + 1, s), slice(lo, hi)) if hi > lo else None)
        out_spatial.append(out_size)
        per_dim.append(windows)
    found = []
    for k, combo in enumerate(itertools.product(*per_dim)):
        if all(w is not None for w in combo):
            found.append((k, tuple(w[0] for w in combo), tuple(w[1] for w in combo)))
    return tuple(out_spatial), found


def _place_taps(layer, tap_maps: torch.Tensor) -> torch.Tensor:
    """(C_out, K, N, *in_spatial) tap maps -> the conv output (N, C_out, *out_spatial): tap k of every
    output position is read at its kernel offset (a convolution whose kernel is one-hot per tap)."""
    out_spatial, windows = _tap_windows(layer, tap_maps.shape[3:])
    y = tap_maps.new_zeros(tap_maps.shape[:1] + tap_maps.shape[2:3] + out_spatial)
    everything = (slice(None), slice(None))
    for k, in_window, out_window in windows:
        y[everything + out_window] += tap_maps[(slice(None), k, slice(None)) + in_window]
    return y.transpose(0, 1).contiguous()


def _gather_taps(layer, grad_y: torch.Tensor, taps: int, in_spatial: Sequence[int]) -> torch.Tensor:
    """The adjoint of :func:`_place_taps`: dL/dT as (C_out, K, N, *in_spatial) from dL/dy."""
    _, windows = _tap_windows(layer, in_spatial)
    grad_out = grad_y.transpose(0, 1)  # (C_out, N, *out_spatial)
    grad_taps = grad_y.new_zeros((grad_y.shape[1], taps, grad_y.shape[0]) + tuple(in_spatial))
    everything = (slice(None), slice(None))
    for k, in_window, out_window in windows:
        grad_taps[(slice(None), k, slice(None)) + in_window] = grad_out[everything + out_window]
    return grad_taps


def convolve_chunked(layer, t: torch.Tensor) -> torch.Tensor:
    """``layer.basis.convolve(t, layer._conv)`` for a KANConvNd ``layer`` with a wavelet basis and numeric
    padding, in chunks that never build the (C_out / groups) x input wavelet tensor, keeping only t for backward."""
    basis = layer.basis
    return basis.mix(WaveletConvFunction.apply(layer, t, basis.scale, basis.translation, basis.wavelet_weight))


class WaveletConvFunction(torch.autograd.Function):
    """``wavelet_conv(t, scale, translation, weight, ...)`` of a KANConvNd ``layer`` with a wavelet
    basis and numeric padding, computed in chunks (see the module docstring)."""

    @staticmethod
    def forward(ctx, layer, t, scale, translation, weight):  # type: ignore[override]
        # Under autocast the plain ops compute psi in full precision and convolve it in the autocast
        # dtype; the node does the same: elementwise work in ``compute``, matmuls in ``matmul``.
        device = t.device.type
        compute = torch.promote_types(t.dtype, scale.dtype)
        matmul = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else compute
        with torch.autocast(device, enabled=False):
            y = _forward(layer, t, scale, translation, weight, compute, matmul)
        ctx.layer, ctx.dtypes = layer, (compute, matmul)
        ctx.save_for_backward(t, scale, translation, weight)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        t, scale, translation, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable replay through the plain ops
            return _differentiable_backward(ctx, t, scale, translation, weight, grad_y)
        with torch.autocast(t.device.type, enabled=False):
            grads = _backward(ctx.layer, t, scale, translation, weight, grad_y, *ctx.dtypes, ctx.needs_input_grad[1])
        return (None, *grads)


def _chunked_columns(layer, t) -> Iterator[Tuple[int, slice, slice, torch.Tensor]]:
    """(group, outputs, positions, the group's input columns at those positions (c, positions)) for
    every chunk."""
    out_channels, c = layer.basis.scale.shape
    groups = layer.basis.groups
    columns = _columns(t)
    for g, o, p in _chunks(groups, out_channels // groups, c, columns.shape[1], _budget(t)):
        yield g, o, p, columns[g * c:(g + 1) * c, p]


def _z(columns: torch.Tensor, inv_scale: torch.Tensor, shift: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """z = x / s - tau / s for a chunk, as (outputs, c, positions) in the compute dtype."""
    return torch.mul(columns[None], inv_scale[:, :, None]).add_(shift[:, :, None]).to(compute)


def _psi_kernel(columns, inv_scale, shift, compute: torch.dtype, chunk_function: ChunkFunction) -> torch.Tensor:
    """psi(z) of a chunk; compiled (kan_zoo.layers.kernels.cpu_kernels) into one pass: z never exists."""
    return chunk_function(_z(columns, inv_scale, shift, compute), False)[0]


def _psi_backward_kernel(columns, inv_scale, shift, grad_psi, compute: torch.dtype,
                         chunk_function: ChunkFunction) -> Tuple[torch.Tensor, ...]:
    """For a chunk: psi(z), and with dL/dz = dL/dpsi psi'(z): its sum and its sum times z over the
    positions, and dL/dx = sum over the outputs of dL/dz / s. Compiled like _psi_kernel (dL/dx always:
    one graph, not one more per layer whose input needs no gradient)."""
    z = _z(columns, inv_scale, shift, compute)
    psi, derivative = chunk_function(z, True)
    grad_z = grad_psi * derivative
    grad_columns = (grad_z * inv_scale[:, :, None].to(compute)).sum(0)
    return psi, grad_z.sum(-1), (grad_z * z).sum(-1), grad_columns


# Wavelets with C chunk kernels (csrc/wavelet.c): the kernel's "kind" code and the amplitude it applies.
_NATIVE_WAVELETS = {"mexican_hat": 0, "dog": 1}


def _native_chunks(basis, t: torch.Tensor, compute: torch.dtype, backward: bool):
    """The C chunk kernel (forward, or backward) where it applies: a wavelet it knows, the C kernels on,
    and everything in t's dtype (the kernel computes in it); else None."""
    if basis.wavelet_type not in _NATIVE_WAVELETS or compute != t.dtype or basis.scale.dtype != t.dtype:
        return None
    if not native_kernels.native_kernels_apply(t):
        return None
    return native_kernels.kernel("wavelet", "wavelet_psi_backward" if backward else "wavelet_psi", t.dtype)


def _native_args(columns: torch.Tensor, inv_scale: torch.Tensor, shift: torch.Tensor) -> tuple:
    """The chunk's columns (rows strided, positions contiguous), its row stride, the chunk's affine rows."""
    if columns.stride(1) != 1:
        columns = columns.contiguous()
    return columns, columns.stride(0), inv_scale.contiguous(), shift.contiguous()


def _native_kind(basis, dtype: torch.dtype) -> tuple:
    """The kernel's wavelet code and amplitude (mexican hat's scale; 1 for the others) as its array."""
    amplitude = MEXICAN_HAT_SCALE if basis.wavelet_type == "mexican_hat" else 1.0
    return _NATIVE_WAVELETS[basis.wavelet_type], torch.tensor([amplitude], dtype=dtype)


class _ChunkKernels:
    """How a node call evaluates its chunks: C kernels, else compiled kernels, else eager ops."""

    def __init__(self, basis, t: torch.Tensor, compute: torch.dtype, backward: bool) -> None:
        self.basis, self.compute = basis, compute
        self.native = _native_chunks(basis, t, compute, backward)
        self.kind = _native_kind(basis, compute) if self.native is not None else None
        self.compiled = self.native is None and _compiled_chunks(basis, t, compute)

    def psi(self, columns: torch.Tensor, inv_scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """psi(z) of a chunk as (outputs, inputs, positions)."""
        if self.native is not None:
            psi = columns.new_empty((inv_scale.shape[0],) + columns.shape)
            native_kernels.call(self.native, *_native_args(columns, inv_scale, shift), *psi.shape, psi, *self.kind,
                                native_kernels.threads())
            return psi
        if self.compiled:
            done, psi = cpu_kernels.run_compiled(_psi_kernel, columns, inv_scale, shift, self.compute,
                                                 self.basis.chunk_function)
            if done:
                return psi
        return _psi(self.basis, _z(columns, inv_scale, shift, self.compute))

    def backward(self, columns: torch.Tensor, inv_scale: torch.Tensor, shift: torch.Tensor,
                 grad_psi: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """For a chunk: psi, the sums over positions of dL/dz and of dL/dz z, and either dL/dcolumns
        (the kernels) or dL/dz itself (eager: the caller adds it output by output, without a sum(0) pass)."""
        if self.native is not None:
            psi = torch.empty_like(grad_psi)
            sums = torch.zeros((2,) + grad_psi.shape[:2], dtype=torch.float64)  # per (output, input)
            grad_columns = columns.new_empty(columns.shape)
            native_kernels.call(self.native, *_native_args(columns, inv_scale, shift), grad_psi.contiguous(),
                                *grad_psi.shape, psi, sums[0], sums[1], grad_columns, *self.kind,
                                native_kernels.threads())
            grad_shift, grad_z_times_z = sums.to(self.compute)
            return psi, grad_shift, grad_z_times_z, grad_columns, None
        if self.compiled:
            done, result = cpu_kernels.run_compiled(_psi_backward_kernel, columns, inv_scale, shift, grad_psi,
                                                    self.compute, self.basis.chunk_function)
            if done:
                return (*result, None)
        z = _z(columns, inv_scale, shift, self.compute)
        psi, grad_z = _psi_and_grad_z(self.basis, z, grad_psi)
        return psi, grad_z.sum(-1), z.mul_(grad_z).sum(-1), None, grad_z


def _compiled_chunks(basis, t: torch.Tensor, compute: torch.dtype) -> bool:
    """Whether the chunks run the compiled kernels: enabled, a closed-form wavelet, a float dtype."""
    return (basis.chunk_function is not None and cpu_kernels.cpu_kernels_apply(t)
            and compute in (torch.float32, torch.float64))


def _forward(layer, t, scale, translation, weight, compute: torch.dtype, matmul: torch.dtype) -> torch.Tensor:
    out_channels = scale.shape[0]
    taps = weight[0, 0].numel()
    inv_scale, shift = _affine(scale, translation)
    tap_weight = weight.flatten(2).transpose(1, 2).to(matmul).contiguous()  # (C_out, K, c)
    tap_maps = t.new_empty(out_channels, taps, t.numel() // t.shape[1], dtype=matmul)
    kernels = _ChunkKernels(layer.basis, t, compute, backward=False)
    for _, o, p, columns in _chunked_columns(layer, t):
        tap_maps[o, :, p] = torch.bmm(tap_weight[o], kernels.psi(columns, inv_scale[o], shift[o]).to(matmul))
    return _place_taps(layer, tap_maps.view(out_channels, taps, *t.shape[:1], *t.shape[2:]))


def _backward(layer, t, scale, translation, weight, grad_y, compute: torch.dtype, matmul: torch.dtype,
              need_t: bool) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of (t, scale, translation, weight), chunk by chunk."""
    n, spatial = t.shape[0], t.shape[2:]
    out_channels, c = scale.shape
    positions = t.numel() // t.shape[1]
    taps = weight[0, 0].numel()
    grad_taps = _gather_taps(layer, grad_y.to(matmul), taps, spatial).view(out_channels, taps, positions)
    inv_scale, shift = _affine(scale, translation)
    tap_weight = weight.flatten(2).to(matmul)  # (C_out, c, K)
    # Sums run in the compute dtype and are cast to each input's dtype at the end.
    grad_columns = torch.zeros((t.shape[1], positions), dtype=compute, device=t.device) if need_t else None
    grad_weight = torch.zeros(tap_weight.shape, dtype=compute, device=t.device)
    grad_shift_sum = torch.zeros(scale.shape, dtype=compute, device=t.device)  # sum over positions of dL/dz
    grad_z_times_z = torch.zeros_like(grad_shift_sum)  # sum over positions of dL/dz * z
    kernels = _ChunkKernels(layer.basis, t, compute, backward=True)
    for g, o, p, columns in _chunked_columns(layer, t):
        grad_psi = torch.bmm(tap_weight[o], grad_taps[o, :, p]).to(compute)
        psi, grad_shift_part, grad_z_times_z_part, grad_columns_part, grad_z = kernels.backward(
            columns, inv_scale[o], shift[o], grad_psi)
        grad_weight[o] += torch.bmm(psi.to(matmul), grad_taps[o, :, p].transpose(1, 2))
        del psi, grad_psi
        grad_shift_sum[o] += grad_shift_part
        grad_z_times_z[o] += grad_z_times_z_part
        # z = x / s - tau / s: the input gradient sums dL/dz / s over the group's outputs.
        if grad_columns is not None:
            rows = grad_columns[g * c:(g + 1) * c, p]
            if grad_z is None:
                rows += grad_columns_part
            else:
                for grad_z_o, inv_scale_o in zip(grad_z, inv_scale[o, :, None]):  # one pass per output, no sum(0)
                    rows.addcmul_(grad_z_o, inv_scale_o)
    grad_t = None
    if grad_columns is not None:
        grad_t = grad_columns.view(t.shape[1], n, *spatial).transpose(0, 1).to(t.dtype).contiguous()
    # dz/dtau = -1/s; dz/ds = -z/s.
    grad_translation = (-grad_shift_sum * inv_scale).to(translation.dtype)
    grad_scale = (-grad_z_times_z * inv_scale).to(scale.dtype)
    return grad_t, grad_scale, grad_translation, grad_weight.view_as(weight).to(weight.dtype)


def _affine(scale: torch.Tensor, translation: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(1 / s, -tau / s): z = x * (1 / s) + (-tau / s) is one fused multiply-add per element."""
    inv_scale = scale.reciprocal()
    return inv_scale, -translation * inv_scale


def _columns(t: torch.Tensor) -> torch.Tensor:
    """t (N, C, *spatial) as (C, N * spatial): a channel's values over every position, contiguous."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _budget(t: torch.Tensor) -> int:
    return _CHUNK_ELEMENTS.get(t.device.type, _DEFAULT_CHUNK_ELEMENTS)


def _psi(basis, z: torch.Tensor) -> torch.Tensor:
    """psi(z) for one chunk; z may be overwritten."""
    closed_form = basis.chunk_function
    return closed_form(z, False)[0] if closed_form is not None else basis.psi(z)


def _psi_and_grad_z(basis, z: torch.Tensor, grad_psi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """psi(z) and dL/dz = dL/dpsi * psi'(z) for one chunk; grad_psi may be overwritten, z is kept."""
    closed_form = basis.chunk_function
    if closed_form is not None:
        psi, derivative = closed_form(z, True)
        return psi, grad_psi.mul_(derivative)
    with torch.enable_grad():
        z_leaf = z.detach().requires_grad_(True)
        psi = basis.psi(z_leaf)
        (grad_z,) = torch.autograd.grad(psi, z_leaf, grad_psi)
    return psi.detach(), grad_z


def _differentiable_backward(ctx, t, scale, translation, weight, grad_y) -> tuple:
    """Backward as ordinary ops on the saved tensors (which keep their history), so the gradients
    can be differentiated again; slower, used only when autograd asks for create_graph."""
    layer = ctx.layer
    y = wavelet_conv(t, scale, translation, weight, layer.basis.groups, layer.basis.psi, layer._conv)
    inputs = [t, scale, translation, weight]
    return (None, *grads_where_needed([y], inputs, [grad_y], ctx.needs_input_grad[1:], create_graph=True))
