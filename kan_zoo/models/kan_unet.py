"""KAN U-Net: a U-Net whose 3x3 convolutions are Kolmogorov-Arnold convolutions.

Registered as ``kan_unet_<basis>`` for every basis in ``kan_zoo.layers.BASES``, plus
``kan_unet_tiny_<basis>`` (widths 4/8/16, three levels) for fast tests and demos.

Layout (Ronneberger et al. 2015, with bilinear upsampling)::

    encoder  level 0: KAN 3x3 -> KAN 3x3 at full resolution; level i: 2x2 max pool -> KAN 3x3 -> KAN 3x3
    decoder  per level, deepest first: bilinear x2 -> concat skip -> KAN 3x3 -> KAN 3x3 (skip's width)
    head     1x1 plain conv to num_classes (``head``)

Every KAN conv ends in its own BatchNorm and output activation. Widths are half the classic U-Net's,
(32, 64, 128, 256, 512) for five levels (a quarter, 16..256, for the wavelet basis whose activations
grow with C_out x C_in), for the reason the classification families halve theirs: a KAN conv with K
basis functions has about (K + 1)x the parameters of a plain conv.

Encoders: ``encoder="kan_resnet18_gram"`` (any timm model that has ``features_only``; a pretrained tag
such as ``"kan_vgg11_gram.in1k"`` with ``encoder_pretrained=True`` loads its classification weights)
replaces the built-in encoder. The decoder then has one level per encoder feature map (skip widths =
the encoder's channels), plus skip-less x2 levels up to full resolution where the encoder's first
map is strided (ResNet and DenseNet start at stride 2, VGG at stride 1).

Inputs: any H x W. The input is zero-padded at the bottom/right to a multiple of the total stride
(2**(levels-1) built in, 32 for the classification encoders) and the logits cropped back, so
``model(x)`` is (N, num_classes, H, W). In train mode with BatchNorm, a batch of one needs an input
larger than one such tile, and InstanceNorm anywhere (the ``kan_vgg*`` encoders, or
``norm_layer="instance"``) always does (e.g. 32 x 64 rather than 32 x 32 with a stride-32 encoder).

Where timm's classification contract does not apply: the output is a logits map, not a vector;
``num_classes=0`` / ``reset_classifier(0)`` return the last decoder features (N, C, H, W);
``global_pool`` is not accepted; there is no ``features_only`` / ``forward_intermediates``; the
pretrained cfgs carry no ``classifier`` and no ``pool_size``, and no weights (train your own, or
start from a pretrained encoder).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import KANConv2d
from ..layers.helpers import NormSpec
from ..segmentation import crop_to, norm_kinds, pad_to_multiple
from ._common import PooledStagesEncoder, SegmentationMixin, check_model_args, kan_conv_args
from ._registry import arch_variants, register_entry_points, segmentation_cfg

__all__ = ["KANUNet", "KANDoubleConv", "KANUNetDecoderBlock", "UNET_WIDTHS"]


class KANDoubleConv(nn.Sequential):
    """Two 3x3 KAN convs (each with its own norm and activation): the unit of every U-Net level."""

    def __init__(self, in_chs: int, out_chs: int, kan_args: Dict[str, Any]) -> None:
        super().__init__(
            KANConv2d(in_chs, out_chs, 3, padding=1, **kan_args),
            KANConv2d(out_chs, out_chs, 3, padding=1, **kan_args),
        )


class KANUNetDecoderBlock(nn.Module):
    """Bilinear x2 upsampling, concatenation with the skip (if any), then a KAN double conv."""

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int, kan_args: Dict[str, Any]) -> None:
        super().__init__()
        self.conv = KANDoubleConv(in_chs + skip_chs, out_chs, kan_args)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Upsampling to the skip's size (not by 2) also covers encoders that round odd sizes.
        size = skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class _BuiltinEncoder(PooledStagesEncoder):
    """Level 0: double conv; level i: max pool then double conv. Returns every level's output."""

    def __init__(self, in_chans: int, widths: Sequence[int], kan_args: Dict[str, Any]) -> None:
        super().__init__(widths, [2**i for i in range(len(widths))])
        chans = [in_chans, *widths]
        self.stages = nn.ModuleList(KANDoubleConv(chans[i], chans[i + 1], kan_args) for i in range(len(widths)))
        self.pool = nn.MaxPool2d(2)


class KANUNet(SegmentationMixin, nn.Module):
    """U-Net of KAN convolutions (see the module docstring for layout, encoders and padding).

    Args:
        num_classes: output channels of the logits map; 0 for the last decoder features.
        in_chans: image channels.
        widths: built-in encoder widths per level (level i has stride 2**i).
        basis, degree, norm_layer, basis_options: the decoder's (and built-in encoder's) KAN convs.
        encoder: a timm model name (optionally with a pretrained tag) to use as the encoder through
            ``timm.create_model(encoder, features_only=True, in_chans=in_chans)``; None for built-in.
        encoder_pretrained: load the encoder's pretrained weights (its tag's, or its default tag's).
        encoder_kwargs: more ``timm.create_model`` arguments for the encoder (e.g. out_indices,
            pretrained_cfg_overlay=dict(file=...)).
        decoder_channels: decoder widths, deepest level first; default: the skip widths, and the
            shallowest skip's width for skip-less levels.
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        basis: str = "gram",
        degree: int = 3,
        norm_layer: NormSpec = "batch",
        basis_options: Optional[Dict[str, Any]] = None,
        encoder: Optional[str] = None,
        encoder_pretrained: bool = False,
        encoder_kwargs: Optional[Dict[str, Any]] = None,
        decoder_channels: Optional[Sequence[int]] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_model_args(in_chans, num_classes)
        dd = {"device": device, "dtype": dtype}
        self.num_classes, self.in_chans = num_classes, in_chans
        self.grad_checkpointing = False
        kan_args = kan_conv_args(basis, degree, norm_layer, basis_options, **dd)
        if encoder is None and len(widths) < 2:
            raise ValueError(f"widths needs at least two levels, got {tuple(widths)}")
        channels, reductions = self._init_encoder(
            encoder, lambda: _BuiltinEncoder(in_chans, widths, kan_args), encoder_pretrained, encoder_kwargs, **dd
        )
        self.pad_multiple = reductions[-1]

        # Decoder levels, deepest first: one per skip, then skip-less ones down to stride 1.
        skipless = reductions[0].bit_length() - 1  # x2 levels from the first map's stride to 1
        skips = list(channels[-2::-1]) + [0] * skipless
        if decoder_channels is None:
            decoder_channels = list(channels[-2::-1]) + [channels[0]] * skipless
        if len(decoder_channels) != len(skips):
            raise ValueError(
                f"decoder_channels needs {len(skips)} widths (deepest first), got {tuple(decoder_channels)}"
            )
        blocks, in_chs = [], channels[-1]
        for skip_chs, out_chs in zip(skips, decoder_channels):
            blocks.append(KANUNetDecoderBlock(in_chs, skip_chs, out_chs, kan_args))
            in_chs = out_chs
        self.decoder = nn.ModuleList(blocks)
        self.num_features = self.head_hidden_size = in_chs
        self.head = self._make_head(num_classes, **dd)
        # The input check needs to know which inputs would leave a norm one value per channel.
        self._batch_norm, self._instance_norm = norm_kinds(self)

    def _make_head(self, num_classes: int, **dd: Any) -> nn.Module:
        return nn.Conv2d(self.num_features, num_classes, 1, **dd) if num_classes else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder level's features, (N, num_features, H, W) for an (N, C, H, W) input."""
        size = self._check(x).shape[-2:]  # kept symbolic (no tuple(), no ints), so that FX can trace it
        features = self.encoder(pad_to_multiple(x, self.pad_multiple))
        x, skips = features[-1], features[:-1][::-1]
        for i, block in enumerate(self.decoder):
            skip = skips[i] if i < len(skips) else None
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, skip, use_reentrant=False)
            else:
                x = block(x, skip)
        return crop_to(x, size)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes, H, W) logits (any H, W; see the module docstring)."""
        return self.forward_head(self.forward_features(x))


# --- registry -----------------------------------------------------------------------------------

# arch -> built-in encoder widths (polynomial bases; width_divisor(basis) more narrow for wavelet).
UNET_WIDTHS: Dict[str, Tuple[int, ...]] = {
    "unet": (32, 64, 128, 256, 512),
    "unet_tiny": (4, 8, 16),
}
_TINY_ARCHS = ("unet_tiny",)


def width_divisor(basis: str) -> int:
    """The wavelet basis keeps (C_out/groups) x C_in x H x W tensors per conv: half the widths again."""
    return 2 if basis == "wavelet" else 1


def model_args(arch: str, basis: str) -> Dict[str, Any]:
    widths = UNET_WIDTHS[arch]
    if arch not in _TINY_ARCHS:
        widths = tuple(w // width_divisor(basis) for w in widths)
    return dict(widths=widths, basis=basis)


_VARIANTS: Dict[str, Tuple[str, str]] = arch_variants(UNET_WIDTHS)

# The KAN papers are cited with the U-Net paper.
default_cfgs = generate_default_cfgs({
    name: segmentation_cfg(64 if arch in _TINY_ARCHS else 256, "encoder.stages.0.0", "arXiv:1505.04597")
    for name, (arch, _) in _VARIANTS.items()
})

_NO_WEIGHTS_HINT = (
    "; the kan_unet models ship no weights: start from a pretrained classifier as encoder, e.g. "
    "encoder='kan_vgg11_gram.in1k', encoder_pretrained=True"
)


def _create_kan_unet(variant: str, pretrained: bool = False, **kwargs: Any) -> KANUNet:
    arch, basis = _VARIANTS[variant]
    try:
        return build_model_with_cfg(KANUNet, variant, pretrained, **{**model_args(arch, basis), **kwargs})
    except RuntimeError as e:
        if pretrained and "No pretrained weights" in str(e):
            raise RuntimeError(f"{e}{_NO_WEIGHTS_HINT}") from e
        raise


register_entry_points(__name__, _VARIANTS, _create_kan_unet)
