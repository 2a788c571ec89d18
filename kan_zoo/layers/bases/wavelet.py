"""Wavelets (WavKAN). The one basis that is not separable: it depends on the output channel."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..helpers import CONV_FNS
from .base import Basis, register_basis

# The mexican hat's amplitude, which its C chunk kernel applies too (kan_zoo.layers.kernels.fused_wavelet).
MEXICAN_HAT_SCALE = 2.0 / (math.sqrt(3.0) * math.pi**0.25)
# (z, with_derivative) -> (psi(z), psi'(z) or None) for one chunk: a wavelet's closed forms.
ChunkFunction = Callable[[torch.Tensor, bool], Tuple[torch.Tensor, Optional[torch.Tensor]]]


def _mexican_hat(z: torch.Tensor) -> torch.Tensor:
    return MEXICAN_HAT_SCALE * (z * z - 1) * torch.exp(-0.5 * z * z)


def _morlet(z: torch.Tensor) -> torch.Tensor:
    return torch.cos(5.0 * z) * torch.exp(-0.5 * z * z)


def _dog(z: torch.Tensor) -> torch.Tensor:
    return -z * torch.exp(-0.5 * z * z)


def _meyer(z: torch.Tensor) -> torch.Tensor:
    v = z.abs()
    s = (2 * v - 1).clamp(0, 1)
    nu = s**4 * (35 - 84 * s + 70 * s * s - 20 * s**3)
    # Scalars, not zeros_like / ones_like: those became constants of the traced shape under torch.jit.trace.
    outer = torch.where(v >= 1, 0.0, torch.cos(math.pi / 2 * nu))
    aux = torch.where(v <= 0.5, 1.0, outer)
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


# psi(z) and, when asked, psi'(z) for one chunk of the fused node (kan_zoo.layers.kernels.fused_wavelet):
# closed forms sharing the Gaussian factor, temporaries reused in place (a chunk's passes then stay
# in cache). Wavelets missing here go through WAVELETS and autograd per chunk.


def _mexican_hat_chunk(z: torch.Tensor, with_derivative: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    q = z * z
    e = q.mul(-0.5).exp_()
    if not with_derivative:
        return q.sub_(1).mul_(e).mul_(MEXICAN_HAT_SCALE), None
    psi = (q - 1).mul_(e).mul_(MEXICAN_HAT_SCALE)
    return psi, q.neg_().add_(3).mul_(z).mul_(e).mul_(MEXICAN_HAT_SCALE)  # A z (3 - z^2) e


def _morlet_chunk(z: torch.Tensor, with_derivative: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    e = (z * z).mul_(-0.5).exp_()
    cos = torch.cos(5.0 * z)
    # -(5 sin 5z + z cos 5z) e
    derivative = torch.sin(5.0 * z).mul_(-5.0).sub_(z * cos).mul_(e) if with_derivative else None
    return cos.mul_(e), derivative


def _dog_chunk(z: torch.Tensor, with_derivative: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    q = z * z
    e = q.mul(-0.5).exp_()
    return (z * e).neg_(), q.sub_(1).mul_(e) if with_derivative else None  # -z e, (z^2 - 1) e


WAVELET_CHUNK_FUNCTIONS: Dict[str, ChunkFunction] = {
    "mexican_hat": _mexican_hat_chunk,
    "morlet": _morlet_chunk,
    "dog": _dog_chunk,
}


def wavelet_conv(
    t: torch.Tensor,
    scale: torch.Tensor,
    translation: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    psi: Callable[[torch.Tensor], torch.Tensor],
    conv: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """The wavelet branch before the output mix, in plain differentiable ops: output o of a group
    convolves psi((t_j - translation_oj) / scale_oj) over the group's inputs j with its kernels
    weight[o, j]. ``conv(x, w, groups)`` is the layer's convolution."""
    n, spatial = t.shape[0], t.shape[2:]
    out_channels, c = scale.shape
    view = (1, groups, out_channels // groups, c) + (1,) * len(spatial)
    x = t.reshape(n, groups, 1, c, *spatial)
    z = (x - translation.view(view)) / scale.view(view)
    return conv(psi(z).reshape(n, out_channels * c, *spatial), weight, out_channels)


@register_basis
class WaveletBasis(Basis):
    """psi((x_j - tau_pj) / s_pj) for every (output p, input j) pair, then a depthwise conv per output
    and a grouped 1x1 conv mixing the outputs of a group.

    Cost: the wavelet tensor has out_channels / groups times the elements of the input. The layer's
    chunked node (kan_zoo.layers.kernels.fused_wavelet) never holds it whole and keeps only its input for
    backward, but the elementwise work still grows with C_out / groups x C_in: use groups on wide layers.
    Where the node does not apply (an asymmetric 'same' padding, export tracing) the plain ops run,
    which keep that tensor for backward unless ``memory_efficient=True``.
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
        """The wavelet branch for input t (N, C_in, *spatial) in plain ops; ``conv(x, w, groups)`` is
        the layer's conv. The layer prefers the chunked node (kan_zoo.layers.kernels.fused_wavelet) where it
        applies."""
        branch = wavelet_conv(t, self.scale, self.translation, self.wavelet_weight, self.groups, self.psi, conv)
        return self.mix(branch)

    @property
    def psi(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return WAVELETS[self.wavelet_type]

    @property
    def chunk_function(self) -> Optional[ChunkFunction]:
        """``(z, with_derivative) -> (psi(z), psi'(z) or None)`` in closed form, or None where the
        fused node evaluates :attr:`psi` and lets autograd differentiate it."""
        return WAVELET_CHUNK_FUNCTIONS.get(self.wavelet_type)

    def mix(self, branch: torch.Tensor) -> torch.Tensor:
        return CONV_FNS[branch.dim() - 2](branch, self.mix_weight, groups=self.groups)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, wavelet_type={self.wavelet_type!r}"
