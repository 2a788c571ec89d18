"""Attention blocks whose projections are KAN convs, in 1D, 2D and 3D.

* :class:`KANSelfAttentionNd`: self-attention over all spatial positions, with query, key and value
  computed by KAN convs (any basis, optionally bottleneck KAN convs, optionally behind a 1x1 inner
  projection to fewer channels), optional multi-head split and optional rotary position embedding
  (:class:`RotaryEmbedding`, axial over the spatial axes). As the research code (torch-conv-kan's
  SelfKANtention), y = norm(gamma * x + attention(q, k, v)) with gamma learned from 0.
* :class:`KANFocalModulationNd`: focal modulation (Yang et al. 2022, FocalNets) with KAN convs: a
  KAN projection gives the query, the context and L + 1 gates; L depth-wise KAN convs of growing
  kernel aggregate the context level by level, a global average adds the last level; the gated sum
  modulates the query through a KAN projection, followed by a norm and a KAN output projection.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from .bottleneck import kan_conv_class
from .helpers import NormSpec, check_input, create_norm, to_tuple

__all__ = [
    "RotaryEmbedding", "KANSelfAttentionNd", "KANSelfAttention1d", "KANSelfAttention2d", "KANSelfAttention3d",
    "KANFocalModulationNd", "KANFocalModulation1d", "KANFocalModulation2d", "KANFocalModulation3d",
]

_PLAIN_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
RESIDUAL_GATES = ("input", "attention")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) over an N-d grid, axial as in Heo et al. 2024 (2D).

    Channel pairs (2i, 2i + 1) of each head rotate by the angle sum_a p_a * freqs[a, h, i], p_a being
    the position's integer coordinate along spatial axis a. Axial frequencies: the head_dim / 2 pairs
    fall into ``ndim`` equal blocks, block a turning with axis a at theta^(-j / P) for its j-th pair
    (P pairs per block; 1D is the usual RoPE, 2D the axial RoPE of Heo et al.). With ``learnable``,
    the frequency table is a parameter that starts there and may learn to mix the axes. Query-key
    products then depend on positions only through their difference.
    """

    def __init__(self, head_dim: int, ndim: int, num_heads: int = 1, theta: float = 100.0,
                 learnable: bool = False) -> None:
        super().__init__()
        if head_dim % (2 * ndim):
            raise ValueError(f"rotary embedding over {ndim} axes needs channels per head divisible by {2 * ndim}, "
                             f"got {head_dim}")
        if theta <= 1:
            raise ValueError(f"rope theta must be > 1, got {theta}")
        self.head_dim, self.ndim, self.num_heads, self.theta = head_dim, ndim, num_heads, theta
        # Fixed frequencies are recomputed in the dtype of use (a float32 table would round them for
        # float64); learnable ones start from the same table.
        self.freqs = nn.Parameter(self.axial_table(torch.get_default_dtype())) if learnable else None

    def axial_table(self, dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.Tensor:
        """(ndim, num_heads, head_dim / 2) axial frequencies: block a of the pairs turns with axis a only."""
        per_axis = self.head_dim // (2 * self.ndim)
        steps = torch.arange(per_axis, dtype=torch.float64, device=device) / per_axis
        table = torch.zeros(self.ndim, self.num_heads, self.head_dim // 2, dtype=torch.float64, device=device)
        for axis in range(self.ndim):
            table[axis, :, axis * per_axis : (axis + 1) * per_axis] = self.theta ** -steps
        return table.to(dtype)

    def angles(self, spatial: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(num_heads, N, head_dim / 2) rotation angles of the N = prod(spatial) positions, row-major."""
        if len(spatial) != self.ndim:
            raise ValueError(f"rotary embedding built for {self.ndim} spatial axes, got shape {tuple(spatial)}")
        axes = [torch.arange(s, device=device, dtype=dtype) for s in spatial]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (ndim, N)
        freqs = self.freqs.to(dtype) if self.freqs is not None else self.axial_table(dtype, device)
        return torch.einsum("an,ahp->hnp", coords, freqs)

    def forward(self, t: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """Rotates t (B, num_heads, N, head_dim), N = prod(spatial)."""
        # Angles reach size * theta^0 radians: float32 at least, even under autocast.
        dtype = torch.promote_types(t.dtype, torch.float32)
        angle = self.angles(spatial, dtype, t.device)
        cos, sin = angle.cos(), angle.sin()
        even, odd = t.to(dtype).unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)
        return rotated.to(t.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, ndim={self.ndim}, num_heads={self.num_heads}, theta={self.theta}"


class KANSelfAttentionNd(nn.Module):
    """Self-attention over spatial positions with KAN-conv query / key / value projections.

    a = proj_in(x) (a 1x1 conv to ``inner_channels``, or x itself); q, k, v = KAN convs of a (same
    channels, ``kernel_size`` with 'same' padding); per head, out_i = sum_j softmax_j(scale * q_i . k_j) v_j
    over all positions i, j (with ``rope``, q and k are rotated first); out goes back through a 1x1
    conv (with ``inner_channels``), then y = norm(gamma * x + out) ("input" ``residual_gate``, as the
    research code) or norm(x + gamma * out) ("attention", SAGAN's form: the block starts as norm(x)).

    Args:
        channels: input and output channels.
        kernel_size: of the q/k/v KAN convs (odd: the output keeps the input's size).
        num_heads: heads; the attention channels must divide by it.
        inner_channels: width of the optional 1x1 inner projection (the research code's inner_projection).
        bottleneck: q/k/v are BottleneckKANConvNd (``dim_reduction`` may be in conv_options).
        rope: rotate q and k by their positions (:class:`RotaryEmbedding`); ``rope_theta`` its base,
            ``rope_learnable`` learned frequencies.
        scale: of the dot products; None is 1/sqrt(channels per head), the usual scaled dot product.
            The research code uses none (scale=1.0), which saturates the softmax as channels grow.
        norm_layer: of the q/k/v convs and of the output (a name such as "batch", None, or a callable).
        conv_options: for the q/k/v KAN convs (basis, degree, dilation, groups, dropout, basis options).
    """

    ndim: ClassVar[int] = 0
    # kan_zoo.convert.convert_block_state_dict: reference module path -> this block's.
    reference_renames: ClassVar[Dict[str, str]] = {
        "norm_layer": "norm", "inner_proj": "proj_in", "outer_proj": "proj_out",
    }

    def __init__(
        self,
        channels: int,
        kernel_size: Union[int, Sequence[int]] = 3,
        *,
        num_heads: int = 1,
        inner_channels: Optional[int] = None,
        bottleneck: bool = False,
        rope: bool = False,
        rope_theta: float = 100.0,
        rope_learnable: bool = False,
        scale: Optional[float] = None,
        residual_gate: str = "input",
        norm_layer: NormSpec = "batch",
        dilation: Union[int, Sequence[int]] = 1,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **conv_options: Any,
    ) -> None:
        super().__init__()
        n = self.ndim
        if residual_gate not in RESIDUAL_GATES:
            raise ValueError(f"residual_gate must be one of {RESIDUAL_GATES}, got {residual_gate!r}")
        width = channels if inner_channels is None else inner_channels
        if not isinstance(num_heads, int) or num_heads < 1 or width % num_heads:
            raise ValueError(f"num_heads must be a positive int dividing the attention channels ({width}), "
                             f"got {num_heads!r}")
        kernel = to_tuple(kernel_size, n, "kernel_size")
        dilation = to_tuple(dilation, n, "dilation")
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel_size must be odd so that q, k, v keep the input's size, got {kernel}")
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        self.channels, self.num_heads, self.residual_gate = channels, num_heads, residual_gate
        self.head_dim = width // num_heads
        self.scale = scale
        factory = {"device": device, "dtype": dtype}
        plain = _PLAIN_CONVS[n]
        self.proj_in = plain(channels, width, 1, **factory) if inner_channels is not None else None
        self.proj_out = plain(width, channels, 1, **factory) if inner_channels is not None else None
        proj = kan_conv_class(n, bottleneck)
        self.proj_q, self.proj_k, self.proj_v = (
            proj(width, width, kernel, padding=padding, dilation=dilation, norm_layer=norm_layer, **factory,
                 **conv_options)
            for _ in range(3)
        )
        self.rope = (RotaryEmbedding(self.head_dim, n, num_heads, rope_theta, rope_learnable).to(**factory)
                     if rope else None)
        self.gamma = nn.Parameter(torch.zeros(1, **factory))
        self.norm = create_norm(norm_layer, channels, n).to(**factory)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Multi-head attention over the positions of (B, C, *spatial) q, k, v; the output is shaped like v."""
        b, c, spatial = v.shape[0], v.shape[1], v.shape[2:]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, *spatial) -> (B, heads, N, C / heads)
            return t.reshape(b, self.num_heads, self.head_dim, -1).transpose(2, 3)

        q, k, v = heads(q), heads(k), heads(v)
        if self.rope is not None:
            q, k = self.rope(q, spatial), self.rope(k, spatial)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return out.transpose(2, 3).reshape(b, c, *spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.ndim, self.channels)
        a = self.proj_in(x) if self.proj_in is not None else x
        out = self.attention(self.proj_q(a), self.proj_k(a), self.proj_v(a))
        if self.proj_out is not None:
            out = self.proj_out(out)
        if self.residual_gate == "input":
            return self.norm(self.gamma * x + out)
        return self.norm(x + self.gamma * out)

    def extra_repr(self) -> str:
        return (f"{self.channels}, num_heads={self.num_heads}, scale={self.scale}, "
                f"residual_gate={self.residual_gate!r}")


class KANFocalModulationNd(nn.Module):
    """Focal modulation (FocalNets) with KAN convs.

    q, z_0, g = split(proj_in(x)) into C, C and L + 1 channels; z_l = focal_layers[l - 1](z_{l-1}), a
    depth-wise KAN conv of kernel focal_window + (l - 1) * focal_factor, for l = 1..L; ctx = sum_l g_l z_l,
    then ctx += mean over positions(ctx) * g_{L+1} (and ctx /= L + 1 with ``normalize_modulator``);
    y = proj_out(norm(q * modulator(ctx))). proj_in, modulator and proj_out are 1x1 KAN convs
    (``kan_projections=False``: proj_in and modulator are plain 1x1 convs with bias, as the research
    code's full_kan=False).

    Deviations from the research code's KAGNFocalModulation (see docs/moe_attention.md): its
    depth-wise layers (KAGNConvNDLayerV2 with groups = C) feed output channel c with basis channels of
    other inputs and degrees; here each is a true depth-wise KAN conv, channel c reading only the
    functions of input c. As in the research code, and unlike FocalNets, the global level averages the
    gated sum ctx rather than the last level z_L, without an activation.

    Args:
        channels: input and output channels C.
        focal_window, focal_level, focal_factor: kernel of the first level, number of levels L, and
            kernel growth per level (kernels must be odd).
        post_norm: the norm after the modulation (research code: use_postln_in_modulation).
        normalize_modulator: divide the context by L + 1.
        bottleneck: the 1x1 projections are BottleneckKANConvNd (the depth-wise layers stay plain KAN convs).
        norm_layer: of every KAN conv and of the post norm.
        conv_options: for every KAN conv (basis, degree, dropout, basis options).
    """

    ndim: ClassVar[int] = 0
    reference_renames: ClassVar[Dict[str, str]] = {
        "f": "proj_in", "h": "modulator", "proj": "proj_out", "norm_layer": "norm",
    }

    def __init__(
        self,
        channels: int,
        focal_window: int = 3,
        focal_level: int = 2,
        focal_factor: int = 2,
        *,
        post_norm: bool = True,
        normalize_modulator: bool = True,
        kan_projections: bool = True,
        bottleneck: bool = False,
        norm_layer: NormSpec = "batch",
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **conv_options: Any,
    ) -> None:
        super().__init__()
        n = self.ndim
        if not isinstance(focal_level, int) or focal_level < 1:
            raise ValueError(f"focal_level must be a positive int, got {focal_level!r}")
        kernels = [focal_window + level * focal_factor for level in range(focal_level)]
        if any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"focal kernels focal_window + l * focal_factor must be odd and positive, got {kernels}")
        if "groups" in conv_options:
            raise ValueError("groups is fixed here: the focal layers are depth-wise, the projections dense")
        self.channels, self.focal_level, self.kernel_sizes = channels, focal_level, kernels
        self.normalize_modulator = normalize_modulator
        factory = {"device": device, "dtype": dtype}
        kan = {"norm_layer": norm_layer, **factory, **conv_options}
        proj = kan_conv_class(n, bottleneck)
        gated = 2 * channels + focal_level + 1
        if kan_projections:
            self.proj_in = proj(channels, gated, 1, **kan)
            self.modulator = proj(channels, channels, 1, **kan)
        else:
            self.proj_in = _PLAIN_CONVS[n](channels, gated, 1, **factory)
            self.modulator = _PLAIN_CONVS[n](channels, channels, 1, **factory)
        self.focal_layers = nn.ModuleList(
            kan_conv_class(n)(channels, channels, k, padding=k // 2, groups=channels, **kan) for k in kernels
        )
        self.norm = create_norm(norm_layer, channels, n).to(**factory) if post_norm else nn.Identity()
        self.proj_out = proj(channels, channels, 1, **kan)

    def context(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(query, aggregated context) of x, both (B, C, *spatial)."""
        c, levels = self.channels, self.focal_level
        q, ctx, gates = self.proj_in(x).split((c, c, levels + 1), 1)
        total = 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            total = total + ctx * gates[:, level : level + 1]
        total = total + total.mean(dim=tuple(range(2, x.ndim)), keepdim=True) * gates[:, levels:]
        if self.normalize_modulator:
            total = total / (levels + 1)
        return q, total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.ndim, self.channels)
        q, ctx = self.context(x)
        return self.proj_out(self.norm(q * self.modulator(ctx)))

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_sizes={self.kernel_sizes}"


class KANSelfAttention1d(KANSelfAttentionNd):
    ndim = 1


class KANSelfAttention2d(KANSelfAttentionNd):
    ndim = 2


class KANSelfAttention3d(KANSelfAttentionNd):
    ndim = 3


class KANFocalModulation1d(KANFocalModulationNd):
    ndim = 1


class KANFocalModulation2d(KANFocalModulationNd):
    ndim = 2


class KANFocalModulation3d(KANFocalModulationNd):
    ndim = 3
