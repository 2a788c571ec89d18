"""KANLinear: the KAN conv core applied to feature vectors, for classifier heads."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from timm.layers import register_notrace_module

from .conv import KANConvNd
from .helpers import NormSpec


@register_notrace_module
class KANLinear(KANConvNd):
    """y = act(norm(sum_f W_f B_f(x))) on (..., in_features) inputs; a 1x1 KANConv1d in disguise.

    ``norm_layer`` defaults to None (a head usually wants raw logits); "batch" or a callable taking
    the number of features also work. Instance norm has nothing to normalise over and is refused.
    The output activation of the basis (e.g. SiLU for gram) is dropped when ``output_activation``
    is False, which is what a final classifier wants.
    """

    ndim = 1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        basis: str = "gram",
        degree: int = 3,
        norm_layer: NormSpec = None,
        output_activation: bool = True,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **basis_options: Any,
    ) -> None:
        if isinstance(norm_layer, str) and norm_layer.startswith("instance"):
            raise ValueError("KANLinear cannot use instance norm (one element per channel); use 'batch' or None")
        super().__init__(
            in_features, out_features, 1, basis=basis, degree=degree, norm_layer=norm_layer, dropout=dropout,
            memory_efficient=memory_efficient, device=device, dtype=dtype, **basis_options,
        )
        if not self.basis.separable:
            raise ValueError(f"KANLinear does not support the non-separable basis {basis!r}")
        if not output_activation:
            self.act = torch.nn.Identity()
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"KANLinear was built for {self.in_features} input features, got an input of shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        y = super().forward(x.reshape(-1, self.in_features, 1))
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
