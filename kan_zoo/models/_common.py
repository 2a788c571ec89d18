"""Model code the kan_* families share, so that each family module holds only its own architecture.

* ``kan_conv_args``: the keyword arguments every KAN conv of a model gets.
* ``check_min_input_size``: the clear error for inputs smaller than a network's total stride.
* ``FeatureTapsMixin``: timm's ``forward_intermediates`` / ``prune_intermediate_layers`` around a
  family's own stage loop; ``run_stages`` is that loop for families whose taps are stage outputs.
* ``PooledClassifierMixin`` (ResNet, DenseNet: ``global_pool`` + a linear layer, as timm's
  ``create_classifier`` makes them) and ``HeadFcMixin`` (VGG, simple, CKAN: a ``self.head`` module
  ending in ``head.fc``): get_classifier / reset_classifier.
* ``PooledStagesEncoder`` and ``SegmentationMixin``: the encoder loop, encoder choice, input check
  and head reset of the segmentation nets (U-Net, U2-Net).

The family modules keep their own ``forward``: timm's FX tracing wraps the notrace input checks
only where they are looked up in the module of the traced ``forward`` (or of an already called
submodule), so ``forward`` and the checks it reaches first must live in the same module. The one
check called from here, ``SegmentationMixin._check``, is wrapped for every FX trace by
``torch.fx.wrap`` below instead.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
from timm.layers import create_classifier, get_device_dtype, register_notrace_function
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..segmentation import check_segmentation_input, create_encoder

# SegmentationMixin._check looks the check up in this module's globals, where timm's autowrapping
# (which patches the traced forward's module) does not reach: without this, FX tracing a U-Net ran
# the check on a Proxy. Wrapped, it is one graph node that still checks the real input at run time.
torch.fx.wrap("check_segmentation_input")

__all__ = [
    "kan_conv_args", "check_min_input_size", "check_model_args", "run_stages", "FeatureTapsMixin",
    "PooledClassifierMixin", "HeadFcMixin", "PooledStagesEncoder", "SegmentationMixin",
]


def kan_conv_args(
    basis: str, degree: int, norm_layer: Any, basis_options: Optional[Dict[str, Any]] = None, **dd: Any
) -> Dict[str, Any]:
    """The KANConv2d keyword arguments of a model: its basis, degree, norm and basis options."""
    return dict(basis=basis, degree=degree, norm_layer=norm_layer, **(basis_options or {}), **dd)


@register_notrace_function  # a leaf in timm's FX tracing: the check reads concrete sizes
def check_min_input_size(x: torch.Tensor, min_size: int, model_name: str) -> torch.Tensor:
    """Returns ``x`` unchanged, or raises a ValueError when its spatial size is below ``min_size``."""
    if x.ndim != 4:
        raise ValueError(f"{model_name} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(
            f"{model_name} needs inputs of at least {min_size}x{min_size} pixels (its total stride), "
            f"got {x.shape[-2]}x{x.shape[-1]}"
        )
    return x


def check_model_args(in_chans: int, num_classes: Optional[int] = None) -> None:
    """Clear errors for an ``in_chans`` (and ``num_classes``) no layer could be built with."""
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")


def run_stages(
    stages: Iterable[nn.Module],
    x: torch.Tensor,
    take_indices: Iterable[int],
    grad_checkpointing: bool = False,
    start: int = 0,
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Runs ``stages`` in order; returns the last output and those of the stages in ``take_indices``.

    Stage i (counted from ``start``) is tapped when i is in ``take_indices``; the taps come out in
    stage order. With ``grad_checkpointing`` each stage is checkpointed (a Sequential block by block).
    """
    take = set(take_indices)
    checkpointing = grad_checkpointing and not torch.jit.is_scripting()
    intermediates = []
    for i, stage in enumerate(stages, start=start):
        if checkpointing:
            x = checkpoint_seq(stage if isinstance(stage, nn.Sequential) else [stage], x)
        else:
            x = stage(x)
        if i in take:
            intermediates.append(x)
    return x, intermediates


class FeatureTapsMixin:
    """timm's ``forward_intermediates`` and ``prune_intermediate_layers`` over ``feature_info``'s taps.

    The family supplies ``_forward_taps(x, take_indices, max_index, stop_early)`` -> (output,
    intermediates in tap order), ``_prune_taps(max_index)`` (drops what follows tap ``max_index``)
    and ``_prune_head(max_index, prune_head)``; ``_num_taps()`` is the number of taps indices refer to.
    """

    grad_checkpointing: bool

    def _num_taps(self) -> int:
        return len(self.feature_info)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features plus the intermediates at feature_info's taps (see the family's ``_forward_taps``).

        ``indices``: last n taps if int, all if None, else those listed. ``norm`` is unused (no
        family has a final norm outside its taps). ``stop_early`` stops after the last wanted tap.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(self._num_taps(), indices)
        x, intermediates = self._forward_taps(x, take_indices, max_index, stop_early)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drops the layers after the last wanted tap (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(self._num_taps(), indices)
        self._prune_taps(max_index)
        self._prune_head(max_index, prune_head)
        return take_indices


class PooledClassifierMixin:
    """The head timm's ``create_classifier`` makes: ``global_pool`` and a linear layer named ``classifier_name``."""

    classifier_name = "fc"

    def _create_head(self, num_classes: int, global_pool: str, **dd: Any) -> None:
        self.global_pool, classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        setattr(self, self.classifier_name, classifier)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        # The new head follows the model's device and dtype (e.g. a float64 or meta model).
        self._create_head(num_classes, global_pool, **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.get_classifier().train(self.training)

    def _prune_head(self, max_index: int, prune_head: bool) -> None:
        last = max_index == len(self.feature_info) - 1
        if not last:
            # The features now end at an earlier tap, so a head sized for the last one must go.
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or not last:
            self.reset_classifier(0, "")


class HeadFcMixin:
    """get/reset_classifier of a model whose ``self.head`` ends in ``head.fc`` and has timm's ``reset``."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        # The new fc follows the model's device and dtype (a float64 or meta model keeps its kind).
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))


class PooledStagesEncoder(nn.Module):
    """A segmentation encoder: ``stages`` with ``pool`` before every stage but the first.

    Returns every stage's output, finest first. Subclasses build ``stages`` and ``pool`` and set
    ``channels`` and ``reductions`` (the pyramid a timm ``features_only`` encoder would report).
    """

    stages: nn.ModuleList
    pool: nn.Module

    def __init__(self, channels: Sequence[int], reductions: Sequence[int]) -> None:
        super().__init__()
        self.channels, self.reductions = list(channels), list(reductions)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            if i:
                x = self.pool(x)
            x = checkpoint(stage, x, use_reentrant=False) if self.grad_checkpointing else stage(x)
            features.append(x)
        return features


class SegmentationMixin:
    """Encoder choice, input check and head reset of the KAN segmentation nets.

    The model sets ``in_chans``, ``pad_multiple`` and ``_batch_norm`` / ``_instance_norm`` (from
    ``norm_kinds``) and implements ``_make_head(num_classes, **dd)``.
    """

    def _init_encoder(
        self,
        encoder: Optional[str],
        builtin: Callable[[], PooledStagesEncoder],
        encoder_pretrained: bool,
        encoder_kwargs: Optional[Dict[str, Any]],
        **dd: Any,
    ) -> Tuple[List[int], List[int]]:
        """Sets ``self.encoder`` (``builtin()`` or the timm model ``encoder``); returns its channels and reductions."""
        if encoder is None:
            self.encoder = builtin()
            channels, reductions = self.encoder.channels, self.encoder.reductions
        else:
            self.encoder, channels, reductions = create_encoder(
                encoder, self.in_chans, encoder_pretrained, encoder_kwargs, **dd
            )
        self.encoder_name = encoder
        return channels, reductions

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder and decoder stage in backward instead of storing its activations."""
        self.grad_checkpointing = enable
        if hasattr(self.encoder, "set_grad_checkpointing"):  # built-in and timm's FeatureListNet
            self.encoder.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head for ``num_classes`` outputs (0: none); ``global_pool`` must be None or ''."""
        if global_pool:
            raise ValueError(f"{type(self).__name__} is a dense predictor and has no global pool, "
                             f"got {global_pool!r}")
        self.num_classes = num_classes
        self.head = self._make_head(num_classes, **get_device_dtype(self))
        if self.head is not None:
            self.head.train(self.training)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        return check_segmentation_input(
            x, self.in_chans, self.pad_multiple, (self.training and self._batch_norm, self._instance_norm),
            type(self).__name__,
        )
