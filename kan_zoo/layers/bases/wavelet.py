"""Wavelets (WavKAN). The one basis that is not separable: it depends on the output channel."""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import torch
from torch import nn

from ..helpers import CONV_FNS
from .base import Basis, register_basis


def _mexican_hat(z: torch.Tensor) -> torch.Tensor:
    return (2.0 / (math.sqrt(3.0) * math.pi**0.25)) * (z * z - 1) * torch.exp(-0.5 * z * z)


def _morlet(z: torch.Tensor) -> torch.Tensor:
    return torch.cos(5.0 * z) * torch.exp(-0.5 * z * z)


def _dog(z: torch.Tensor) -> torch.Tensor:
    return -z * torch.exp(-0.5 * z * z)


def _meyer(z: torch.Tensor) -> torch.Tensor:
    v = z.abs()
    s = (2 * v - 1).clamp(0, 1)
    nu = s**4 * (35 - 84 * s + 70 * s * s - 20 * s**3)
    aux = torch.where(v <= 0.5, torch.ones_like(v), torch.where(v >= 1, torch.zeros_like(v), torch.cos(math.pi / 2 * nu)))
    return torch.sin(math.pi * v) * aux


def _shannon(z: torch.Tensor) -> torch.Tensor:
    # The real Shannon wavelet sinc(z/2) cos(3 pi z / 2); the reference's extra Hamming window over
    # the last tensor axis made the function depend on the input's width and is left out.
    return torch.sinc(z / 2) * torch.cos(1.5 * math.pi * z)


WAVELETS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mexican_hat": _mexican_hat,
    "morlet": _morlet,
    "dog": _dog,
    "meyer": _meyer,
    "shannon": _shannon,
}


@register_basis
class WaveletBasis(Basis):
    """psi((x_j - tau_pj) / s_pj) for every (output p, input j) pair, then a depthwise conv per output
    and a grouped 1x1 conv mixing the outputs of a group.

    Memory: the wavelet tensor has out_channels / groups times the elements of the input, so this
    layer keeps (C_out / G) x the activations of the other bases for backward. Use groups or
    ``memory_efficient=True`` on wide layers.
    """

    name = "wavelet"
    output_activation = "identity"
    default_norm = "batch"
    separable = False

    def __init__(
        self,
        channels: int,
        degree: int = 3,
        *,
        out_channels: int,
        groups: int,
        kernel_size: Sequence[int],
        wavelet_type: str = "mexican_hat",
    ) -> None:
        super().__init__(channels, degree)
        if wavelet_type not in WAVELETS:
            raise ValueError(f"unknown wavelet_type {wavelet_type!r}; valid: {', '.join(WAVELETS)}")
        self.wavelet_type, self.groups = wavelet_type, groups
        c, o = channels // groups, out_channels // groups
        self.scale = nn.Parameter(torch.ones(out_channels, c))
        self.translation = nn.Parameter(torch.zeros(out_channels, c))
        # Depthwise conv of each output's c wavelet channels, then a 1x1 mixing the o outputs of a group.
        self.wavelet_weight = nn.Parameter(torch.empty(out_channels, c, *kernel_size))
        self.mix_weight = nn.Parameter(torch.empty(out_channels, o, *(1,) * len(kernel_size)))
        nn.init.kaiming_uniform_(self.wavelet_weight, nonlinearity="linear")
        nn.init.kaiming_uniform_(self.mix_weight, nonlinearity="linear")

    @property
    def num_functions(self) -> int:
        return 1

    def convolve(self, t: torch.Tensor, conv: Callable[..., torch.Tensor]) -> torch.Tensor:
        """The wavelet branch for input t (N, C_in, *spatial); ``conv(x, w, groups)`` is the layer's conv."""
        n, spatial = t.shape[0], t.shape[2:]
        out_channels, c = self.scale.shape
        o = out_channels // self.groups
        view = (1, self.groups, o, c) + (1,) * len(spatial)
        x = t.reshape(n, self.groups, 1, c, *spatial)
        z = (x - self.translation.view(view)) / self.scale.view(view)
        psi = WAVELETS[self.wavelet_type](z).reshape(n, out_channels * c, *spatial)
        y = conv(psi, self.wavelet_weight, out_channels)
        return CONV_FNS[len(spatial)](y, self.mix_weight, groups=self.groups)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, wavelet_type={self.wavelet_type!r}"
