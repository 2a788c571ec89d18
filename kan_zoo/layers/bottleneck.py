"""Bottleneck KAN convolution: 1x1 squeeze -> basis -> KxK conv -> 1x1 expand, plus a base branch.

The basis expansion multiplies channels by its size, so on wide layers it runs on a narrower
"inner" width instead: inner = int(max(c, o) / dim_reduction), raised to min(16, c, o) when below 16
(c, o: input and output channels per group), as in the reference BottleNeckKAGN layers.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Optional, Union

import torch
from timm.layers import register_notrace_module
from torch import nn

from .bases import get_basis_class
from .conv import DEFAULT_NORM, KANConv1d, KANConv2d, KANConv3d, KANConvNd, _IntOrTuple, _uniform
from .helpers import CONV_FNS, NormSpec, check_channels, check_input

__all__ = ["BottleneckKANConvNd", "BottleneckKANConv1d", "BottleneckKANConv2d", "BottleneckKANConv3d", "inner_width",
           "kan_conv_class"]


def inner_width(in_per_group: int, out_per_group: int, dim_reduction: float, min_inner: int = 16) -> int:
    inner = int(max(in_per_group / dim_reduction, out_per_group / dim_reduction))
    return min(min_inner, in_per_group, out_per_group) if inner < min_inner else inner


class NoiseInjection(nn.Module):
    """Training-only regulariser: adds Gaussian noise scaled by each channel's std to a random
    fraction ``p`` of elements (the reference bottleneck's "dropout")."""

    def __init__(self, p: float, alpha: float = 0.05) -> None:
        super().__init__()
        self.p, self.alpha = p, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        dims = [0] + list(range(2, x.ndim))
        std = x.detach().std(dim=dims, keepdim=True)
        mask = torch.rand_like(x) < self.p
        return x + mask * torch.randn_like(x) * std * self.alpha


class BottleneckKANConvNd(KANConvNd):
    """y = act(norm(proj_out(conv(B(t), weight)) + conv(base(x), base_weight))), t = prepare(proj_in(x)).

    Same signature as KANConvNd plus ``dim_reduction`` and ``noise_injection`` (probability of the
    training-time noise on the input). Bases whose norm runs on the input (rbf) or that are not
    separable (wavelet) have no bottleneck form.

    Parameters: proj_in_weight (G*m, c, 1..), weight (G*m, K*m, *kernel) function-major,
    proj_out_weight (G*o, m, 1..), base_weight (C_out, c, *kernel), basis.*, norm.*, act.*.
    """

    # Never the eager node, even where KANConvNd's switch asks for it: the narrow inner conv compiles well
    # (in-graph plain ops 1.10x the eager layer, the called node 1.01x; 64 -> 64 channels, 56x56, batch 8).
    compile_calls_eager_node: ClassVar[Optional[bool]] = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrTuple,
        stride: _IntOrTuple = 1,
        padding: Union[str, _IntOrTuple] = 0,
        dilation: _IntOrTuple = 1,
        groups: int = 1,
        *,
        basis: str = "gram",
        degree: int = 3,
        norm_layer: NormSpec = DEFAULT_NORM,
        dropout: float = 0.0,
        dim_reduction: float = 4.0,
        noise_injection: float = 0.0,
        memory_efficient: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **basis_options: Any,
    ) -> None:
        basis_cls = get_basis_class(basis)
        if basis_cls.normalizes_input or not basis_cls.separable:
            raise ValueError(f"basis {basis!r} has no bottleneck form; use KANConv{self.ndim}d")
        if dim_reduction <= 0:
            raise ValueError(f"dim_reduction must be > 0, got {dim_reduction}")
        if not 0.0 <= noise_injection < 1.0:
            raise ValueError(f"noise_injection must be in [0, 1), got {noise_injection}")
        check_channels(in_channels, out_channels, groups)
        self.inner = inner_width(in_channels // groups, out_channels // groups, dim_reduction)
        self.dim_reduction = dim_reduction
        self.noise_injection = noise_injection
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            basis=basis, degree=degree, norm_layer=norm_layer, dropout=dropout, memory_efficient=memory_efficient,
            device=device, dtype=dtype,
            **basis_options,
        )

    def _core_shape(self):
        # The basis runs on the inner width; the KxK conv maps K*m to m per group, without the base.
        return self.groups * self.inner, self.groups * self.inner, False

    def _make_extra_parameters(self) -> None:
        ones = (1,) * self.ndim
        c, m = self.in_channels // self.groups, self.inner
        self.proj_in_weight = nn.Parameter(torch.empty(self.groups * m, c, *ones))
        self.proj_out_weight = nn.Parameter(torch.empty(self.out_channels, m, *ones))
        self.base_weight = (
            nn.Parameter(torch.empty(self.out_channels, c, *self.kernel_size)) if self.has_base else None
        )
        self.noise = NoiseInjection(self.noise_injection)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        c = self.in_channels // self.groups
        with torch.no_grad():
            _uniform(self.proj_in_weight, c)
            _uniform(self.proj_out_weight, self.inner)
            if self.base_weight is not None:
                _uniform(self.base_weight, c * math.prod(self.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.ndim, self.in_channels)
        x = self.noise(x)
        inner = CONV_FNS[self.ndim](x, self.proj_in_weight, groups=self.groups)
        y = self.expand_conv(None, inner)
        y = CONV_FNS[self.ndim](y, self.proj_out_weight, groups=self.groups)
        if self.base_weight is not None:
            y = y + self._conv(self.basis.base(x), self.base_weight, self.groups)
        return self.act(self.norm(y))


@register_notrace_module
class BottleneckKANConv1d(BottleneckKANConvNd):
    ndim = 1


@register_notrace_module
class BottleneckKANConv2d(BottleneckKANConvNd):
    ndim = 2


@register_notrace_module
class BottleneckKANConv3d(BottleneckKANConvNd):
    ndim = 3


def kan_conv_class(ndim: int, bottleneck: bool = False) -> type:
    """KANConv{ndim}d, or BottleneckKANConv{ndim}d with ``bottleneck``: for blocks built of KAN convs."""
    classes = ((BottleneckKANConv1d, BottleneckKANConv2d, BottleneckKANConv3d) if bottleneck
               else (KANConv1d, KANConv2d, KANConv3d))
    return classes[ndim - 1]
