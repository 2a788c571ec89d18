"""KANActivation: a learnable univariate function per channel, on any basis of BASES.

The convolutional-KAN designs that keep ordinary convolutions ("learnable-activation CKANs") put
the Kolmogorov-Arnold part after the conv: each channel c gets its own function

    phi_c(x) = w_c0 * base(x) + sum_i w_ci * B_i(prepare(x))

with the basis's base activation (where it has one) and its functions B_i. All channels are
evaluated at once: the basis expands the whole tensor and one broadcast multiply-and-sum applies
the (C, F) coefficient table, so there is no Python loop over channels.

Inputs are (N, C) features or (N, C, *spatial) maps of any rank; the layer works on a flattened
(N, C, L) view, which is also what lets the non-separable wavelet basis run as a per-channel
function (its scale, translation and two weights per channel, through a 1x1 depthwise conv).
Bases whose conv layer normalises its input first (rbf) get no norm here: put the norm where the
network wants it, or refit the grid to the data with ``kan_zoo.grid.update_grid``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch
from timm.layers import register_notrace_module
from torch import nn
from torch.nn import functional as F

from .bases import get_basis_class
from .helpers import match_checkpoint_grid

__all__ = ["KANActivation"]


@register_notrace_module
class KANActivation(nn.Module):
    """phi_c(x) for every channel c of a (N, C) or (N, C, *spatial) input; output has the input's shape.

    Args:
        channels: C.
        basis: a name in kan_zoo.layers.BASES (B-splines by default, as in the original KAN).
        degree: the basis degree (spline order for bspline, k for relu).
        basis_options: passed to the basis (e.g. ``grid_size``, ``grid_range``, ``wavelet_type``).

    Parameters:
        weight: (C, F); column 0 is the base branch's coefficient when the basis has a base
            activation (``base_folded``), the others the coefficients of B_1..B_K. Initialised so
            phi starts close to the base activation (or a random mix of functions without one).
        basis.*: the basis's own parameters (relu phases, Gram betas, wavelet scale/translation...).
    """

    def __init__(
        self,
        channels: int,
        basis: str = "bspline",
        degree: int = 3,
        *,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **basis_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        basis_cls = get_basis_class(basis)
        if not basis_cls.separable:
            # One group per channel and a 1x1 "kernel": the wavelet becomes a per-channel function.
            basis_options = dict(basis_options, out_channels=channels, groups=channels, kernel_size=(1,))
        try:
            self.basis = basis_cls(channels, degree, **basis_options)
        except TypeError as e:
            raise TypeError(f"bad option for basis {basis!r}: {e}") from None
        self.channels = channels
        self.base_folded = self.basis.base_activation is not None
        # Same naming as KANConvNd, so regularisers and grid refinement treat both alike.
        self.num_functions = int(self.base_folded) + (self.basis.num_functions if self.basis.separable else 0)
        self.weight = nn.Parameter(torch.empty(channels, self.num_functions))
        self.reset_parameters()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            first = int(self.base_folded)
            if first:
                self.weight[:, 0].fill_(1.0)  # start as the base activation, as the original KAN does
            k = self.num_functions - first
            if k:
                # Small noise on the basis part when a base branch carries the signal, O(1) otherwise.
                std = 0.1 if first else 1.0 / math.sqrt(k)
                self.weight[:, first:].normal_(0.0, std)

    def coefficients(self) -> torch.Tensor:
        """The (C, F) coefficient table (a view of ``weight``)."""
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"KANActivation was built for {self.channels} channels and expects (N, C) or (N, C, *spatial) "
                f"inputs, got shape {tuple(x.shape)}"
            )
        u = x.reshape(x.shape[0], self.channels, -1)  # (N, C, L): one code path for every rank
        w = self.weight.to(u.dtype)
        first = int(self.base_folded)
        if self.basis.separable:
            functions = self.basis.expand(self.basis.prepare(u))
            if first:
                functions = [self.basis.base(u)] + functions
            y = (torch.stack(functions, dim=2) * w[None, :, :, None]).sum(2)
        else:
            conv = lambda t, weight, groups: F.conv1d(t, weight, None, 1, 0, 1, groups)  # noqa: E731
            y = self.basis.convolve(self.basis.prepare(u), conv)
            if first:
                y = y + w[None, :, 0, None] * self.basis.base(u)
        return y.reshape(x.shape)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint written after grid growth has another grid size than this architecture's.
        match_checkpoint_grid(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.channels}, basis={self.basis.name!r}, num_functions={self.num_functions}"
