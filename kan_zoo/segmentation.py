"""What the dense-prediction families (kan_unet, kan_u2net) share: input checks, pad/crop, losses.

* ``pad_to_multiple`` / ``crop_to``: the networks pool by 2 several times, so they pad the input
  (zeros, at the bottom and right) up to a multiple of their total stride and crop the logits back.
  Any H x W works and every skip connection meets a map of exactly its size.
* ``check_segmentation_input``: a clear ValueError for inputs a network cannot take.
* ``create_encoder``: a timm classification backbone as a feature pyramid (``features_only=True``),
  checked to have the doubling strides a U-shaped decoder needs.
* ``segmentation_loss``: BCE-with-logits for one output channel, cross-entropy for K > 1.
* ``deep_supervision_loss``: that loss summed over a U2-Net's fused map and side outputs (what a
  ``kan_u2net_*`` model returns in train mode); a single tensor works too, so one training loop
  serves U-Net and U2-Net.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
from timm.layers import register_notrace_function
from torch import nn
from torch.nn import functional as F

__all__ = [
    "pad_to_multiple", "crop_to", "check_segmentation_input", "norm_kinds", "check_encoder_pyramid", "create_encoder",
    "segmentation_loss", "deep_supervision_loss",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@register_notrace_function  # reads concrete sizes: a leaf under timm's FX tracing
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads (N, C, H, W) at the bottom/right so that H and W are multiples of ``multiple``."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def crop_to(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """The top-left ``size`` window of (N, C, H, W): undoes ``pad_to_multiple``."""
    return x[..., : size[0], : size[1]]


@register_notrace_function
def check_segmentation_input(
    x: torch.Tensor, in_chans: int, multiple: int, norms: Tuple[bool, bool], model_name: str
) -> torch.Tensor:
    """Returns ``x`` or raises a ValueError saying what is wrong with it.

    ``norms``: (the network is in train mode and has BatchNorms, it has InstanceNorms). At the
    deepest level (stride ``multiple``) an input padded to a single ``multiple`` x ``multiple`` tile
    has one value per image and channel: too few for InstanceNorm, and for BatchNorm in training
    on a batch of one.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{model_name} expects a 4-D input (N, C, H, W), got {shape}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{model_name} was built for in_chans={in_chans}, got an input with {x.shape[1]} channels "
            f"(shape {tuple(x.shape)}); create the model with in_chans={x.shape[1]}"
        )
    if min(x.shape) == 0:
        raise ValueError(f"{model_name} got an empty input of shape {tuple(x.shape)}")
    batch_norm_training, instance_norm = norms
    deepest = -(-x.shape[-2] // multiple) * -(-x.shape[-1] // multiple)
    if deepest < 2 and (instance_norm or (batch_norm_training and x.shape[0] < 2)):
        norm, fix = ("InstanceNorm", "an input") if instance_norm else (
            "BatchNorm in train mode", "a batch of >= 2 or an input")
        raise ValueError(
            f"{model_name} pads its input to a multiple of {multiple} and its deepest level then has one "
            f"value per image and channel, too few for its {norm}; use {fix} larger than "
            f"{multiple}x{multiple} (got {tuple(x.shape)})"
        )
    return x


def norm_kinds(model: nn.Module) -> Tuple[bool, bool]:
    """(has a BatchNorm, has an InstanceNorm): what ``check_segmentation_input`` needs to know."""
    modules = list(model.modules())
    return (any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules),
            any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in modules))


def check_encoder_pyramid(channels: Sequence[int], reductions: Sequence[int], name: str) -> None:
    """Raises a ValueError unless the feature maps have strides r, 2r, 4r, ... (r a power of two)."""
    first = reductions[0] if reductions else 0
    ok = len(reductions) >= 2 and first >= 1 and first & (first - 1) == 0
    ok = ok and all(b == 2 * a for a, b in zip(reductions, reductions[1:]))
    if not ok or len(channels) != len(reductions):
        raise ValueError(
            f"encoder {name!r} gives feature maps with reductions {list(reductions)}; a U-shaped decoder "
            f"needs at least two maps whose strides double from one to the next (e.g. [2, 4, 8, 16, 32])"
        )


def create_encoder(
    name: str,
    in_chans: int,
    pretrained: bool = False,
    kwargs: Optional[Dict[str, Any]] = None,
    device: Any = None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[nn.Module, List[int], List[int]]:
    """``timm.create_model(name, features_only=True, ...)`` and its (channels, reductions), checked.

    ``name`` may carry a pretrained tag ("kan_vgg11_gram.in1k"); ``pretrained`` loads its weights
    (timm adapts the first conv to ``in_chans``); ``kwargs`` go to timm.create_model as well.
    """
    dd = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    encoder = timm.create_model(
        name, features_only=True, pretrained=pretrained, in_chans=in_chans, **{**dd, **(kwargs or {})}
    )
    channels, reductions = encoder.feature_info.channels(), encoder.feature_info.reduction()
    check_encoder_pyramid(channels, reductions, name)
    return encoder, channels, reductions


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """BCE-with-logits when ``logits`` has one channel, else cross-entropy.

    One channel: ``target`` is a (N, H, W) or (N, 1, H, W) mask of 0/1 (bool, int or float).
    K channels: ``target`` is (N, H, W) class indices; ``ignore_index`` pixels are left out.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N, K, H, W), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if target.shape != logits.shape:
            raise ValueError(f"binary target must be (N, H, W) or (N, 1, H, W) like the logits "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    if target.ndim != 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"a {logits.shape[1]}-class target must be (N, H, W) class indices matching the "
                         f"logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)


def deep_supervision_loss(
    outputs: Union[torch.Tensor, Sequence[torch.Tensor]],
    target: torch.Tensor,
    loss_fn: Optional[Union[LossFn, nn.Module]] = None,
    weights: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """Weighted sum of ``loss_fn(output, target)`` over every output map (U2-Net's deep supervision).

    Args:
        outputs: a U2-Net's train-mode tuple (fused, side_1, ..., side_6), or one logits tensor.
        target: as for ``segmentation_loss`` (the default ``loss_fn``).
        weights: one per output; default 1 for each, the U2-Net paper's plain sum of the seven losses.
    """
    maps = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    if not maps:
        raise ValueError("outputs is empty")
    weights = [1.0] * len(maps) if weights is None else list(weights)
    if len(weights) != len(maps):
        raise ValueError(f"got {len(weights)} weights for {len(maps)} outputs")
    loss_fn = loss_fn or segmentation_loss
    return sum(w * loss_fn(m, target) for w, m in zip(weights, maps))
