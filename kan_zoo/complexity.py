"""Parameter and MAC counts of registered models, without allocating or computing anything.

    from kan_zoo.complexity import measure
    params, gmacs = measure("kan_vgg11_gram")          # at the pretrained cfg's input size
    params, gmacs = measure("kan_resnet18_gram", img_size=256)

The model is built on the meta device (shapes only: no memory, no init cost, milliseconds per
model) and one meta tensor is run through it under ``torch.utils.flop_counter.FlopCounterMode``,
which counts from the real op shapes, so every family and basis is measured by the code path a real
forward takes. MACs = FLOPs / 2.

The counter sees matrix products and convolutions only. That dominates the polynomial, spline, rbf
and relu bases (their basis evaluation is O(K) elementwise ops per input element, against
O(K x C_out x k^2) MACs of the conv that follows); it does NOT dominate the wavelet basis, whose
elementwise evaluation over (C_out / groups) x C_in x H x W elements per layer is left out.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["measure", "count", "MAC_COUNT_NOTE", "WAVELET_MAC_NOTE"]

# What the MAC figures cover, for tables and cards that print them (the second only where a wavelet layer is).
MAC_COUNT_NOTE = "convolutions and matrix products only, counted by FlopCounterMode on the meta device"
WAVELET_MAC_NOTE = "the wavelet basis's elementwise wavelet evaluation is not included"


def measure(name: str, img_size: Optional[int] = None) -> Tuple[int, Optional[float]]:
    """(parameter count, GMACs of one image) of timm model ``name`` (a tag like 'arch.in1k' is fine).

    ``img_size`` is the square input side; None uses the pretrained cfg's ``input_size``. GMACs is
    None, with a warning, where the meta forward is not supported.
    """
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    chans, height, width = model.pretrained_cfg["input_size"]
    if img_size is not None:
        height = width = img_size
    return count(model, (chans, height, width), name=name)


def count(model: nn.Module, input_size: Tuple[int, int, int], *, name: str = "") -> Tuple[int, Optional[float]]:
    """(parameter count, GMACs of one ``input_size`` image) of a built model, best on the meta device."""
    params = sum(p.numel() for p in model.parameters())
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")  # the input goes where the weights are
    x = torch.empty(1, *input_size, device=device)
    try:
        # no_grad: inference MACs, and it keeps every layer on its plain (meta-capable) path.
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    except (RuntimeError, NotImplementedError, ValueError) as e:
        warnings.warn(f"no MACs for {name or type(model).__name__}: {e}", stacklevel=2)
        return params, None
    return params, counter.get_total_flops() / 2 / 1e9
