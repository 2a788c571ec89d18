"""KAN U2-Net: U2-Net (Qin et al. 2020) whose 3x3 convolutions are Kolmogorov-Arnold convolutions.

Registered as ``kan_u2net_<basis>`` and ``kan_u2net_small_<basis>`` for every basis in
``kan_zoo.layers.BASES``, plus ``kan_u2net_tiny_<basis>`` (the same topology, 2/8 channels) for tests.

Layout (the paper's): six encoder stages and five decoder stages, each a ReSidual U-block (RSU)::

    RSU-L(x) = x_in + U(x_in),  x_in = KAN 3x3 (C_in -> C_out)
    U: a small U-Net over x_in of height L: KAN 3x3 levels with 2x2 max pools between them (the last
       level dilated by 2 instead of pooled), decoded with bilinear x2 upsampling and concatenation.
    RSU-4F: no pooling, dilations 1, 2, 4, 8 then 4, 2, 1 (for the low-resolution stages).

    encoder  RSU-7, RSU-6, RSU-5, RSU-4, RSU-4F, RSU-4F  (a 2x2 max pool between stages)
    decoder  RSU-4F, RSU-4, RSU-5, RSU-6, RSU-7          (bilinear x2, concat with the encoder stage)
    heads    a plain 3x3 conv to num_classes on each decoder stage and the last encoder stage (six
             side maps, upsampled to the input size) and a 1x1 conv fusing the six (``head``)

Every KAN conv ends in its own BatchNorm and output activation. Widths (mid / out channels of the
RSU blocks) are half the paper's, for the reason the classification families halve theirs (a KAN
conv with K basis functions has about (K + 1)x the parameters of a plain conv); a quarter for the
wavelet basis. ``small`` is the paper's U2-Net-dagger (mid 16, out 64 everywhere) at half width.

Encoders: ``encoder="kan_resnet18_gram"`` (any timm model with ``features_only``; a pretrained tag
such as ``"kan_vgg11_gram.in1k"`` with ``encoder_pretrained=True`` loads its classification weights)
replaces the RSU encoder. The decoder then has one RSU stage per skip, of the height, dilation and
widths the paper gives that stride (``rsu_shape``), and one side output per decoder stage plus one on
the deepest map: 5 side outputs for ResNet/DenseNet encoders (strides 2..32, the finest side map
upsampled from stride 2), 6 for VGG (strides 1..32).

Outputs:
  * eval mode: ``model(x)`` is the fused logits map, (N, num_classes, H, W);
  * train mode: ``model(x)`` is the tuple (fused, side_1, ..., side_n) of such maps, side_1 the finest
    (n = 6 with the built-in encoder), for deep supervision:
    ``kan_zoo.segmentation.deep_supervision_loss(outputs, target)`` sums the loss over all of them
    as the paper does. ``model.forward_all(x)`` returns the tuple in either mode.
  * ``num_classes=0``: no heads; ``model(x)`` is the finest decoder stage's features (N, C, H, W).

Inputs: any H x W; the input is zero-padded at the bottom/right to a multiple of 32 (the total
stride, reached inside the first RSU-7 as well as across the stages) and the outputs cropped back.
The RSU-based decoder needs encoders whose deepest map has stride <= 32.
In train mode a batch of one needs an input larger than 32 x 32 (BatchNorm at the deepest level);
with InstanceNorm (``norm_layer="instance"``, or a ``kan_vgg*`` encoder) every input does.

Where timm's classification contract does not apply: the outputs are logits maps (a tuple in train
mode); there is no ``forward_features`` / ``forward_head`` split, no global pool, no ``features_only``
and no ``forward_intermediates``; ``get_classifier()`` returns the side convs plus the fusion conv;
the pretrained cfgs carry no ``classifier``, no ``pool_size`` and no weights.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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

__all__ = ["KANU2Net", "KANRSU", "KANU2NetHead", "U2NET_WIDTHS", "rsu_shape"]

NUM_STAGES = 11  # 6 encoder stages (strides 1..32), 5 decoder stages (strides 16..1)
TOTAL_STRIDE = 32  # 5 pools across the stages, and 5 inside the first RSU-7


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size``. Called even where the size already matches (bilinear
    at scale 1 returns its input exactly), so that no Python comparison of shapes stops FX tracing."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class KANRSU(nn.Module):
    """ReSidual U-block of height L: ``x_in + U(x_in)`` with ``x_in`` a KAN 3x3 of the input.

    ``dilated=False`` (RSU-L): levels 1..L-1 at strides 1..2**(L-2) (max pools between), level L
    dilated by 2 at the last stride. ``dilated=True`` (RSU-LF): no pools, dilations 1, 2, 4, ...
    """

    def __init__(
        self, height: int, in_chs: int, mid_chs: int, out_chs: int, kan_args: Dict[str, Any], dilated: bool = False
    ) -> None:
        super().__init__()
        if height < 2:
            raise ValueError(f"an RSU block needs height >= 2, got {height}")

        def conv(cin: int, cout: int, dilation: int = 1) -> KANConv2d:
            return KANConv2d(cin, cout, 3, padding=dilation, dilation=dilation, **kan_args)

        if dilated:
            enc_dilations = [2**i for i in range(height)]
            dec_dilations = enc_dilations[-2::-1]
        else:
            enc_dilations = [1] * (height - 1) + [2]
            dec_dilations = [1] * (height - 1)
        self.conv_in = conv(in_chs, out_chs)
        self.encoder = nn.ModuleList(
            conv(out_chs if i == 0 else mid_chs, mid_chs, d) for i, d in enumerate(enc_dilations)
        )
        self.decoder = nn.ModuleList(
            conv(2 * mid_chs, out_chs if i == height - 2 else mid_chs, d) for i, d in enumerate(dec_dilations)
        )
        # Pools sit before encoder levels 1..L-2, 0-based (the dilated top level keeps the last stride).
        self.pooled = not dilated
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.conv_in(x)
        levels: List[torch.Tensor] = []
        h = x_in
        last = len(self.encoder) - 1
        for i, conv in enumerate(self.encoder):
            if self.pooled and 0 < i < last:
                h = self.pool(h)
            h = conv(h)
            levels.append(h)
        for i, conv in enumerate(self.decoder):
            skip = levels[-2 - i]
            if self.pooled and i > 0:  # the first decoder level shares the top level's stride
                h = _upsample(h, skip.shape[-2:])
            h = conv(torch.cat([h, skip], dim=1))
        return h + x_in


class KANU2NetHead(nn.Module):
    """Plain 3x3 side convs to ``num_classes`` (one per side feature) and the 1x1 conv fusing them."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, **dd: Any) -> None:
        super().__init__()
        self.sides = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1, **dd) for c in in_channels)
        self.fuse = nn.Conv2d(len(in_channels) * num_classes, num_classes, 1, **dd)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> Tuple[torch.Tensor, ...]:
        """Features finest first -> (fused, side_1, ..., side_n), all upsampled to ``size``."""
        sides = [_upsample(side(f), size) for side, f in zip(self.sides, features)]
        return (self.fuse(torch.cat(sides, dim=1)), *sides)


def rsu_shape(stride: int) -> Tuple[int, bool]:
    """(height, dilated) of the RSU block at ``stride``: its pools reach stride 32, as in the paper."""
    return (4, True) if stride >= 16 else (8 - stride.bit_length(), False)


class _RSUEncoder(PooledStagesEncoder):
    """The paper's encoder: RSU-7, 6, 5, 4, 4F, 4F with a 2x2 max pool between stages."""

    def __init__(self, in_chans: int, mids: Sequence[int], outs: Sequence[int], kan_args: Dict[str, Any]) -> None:
        super().__init__(outs, [2**i for i in range(len(outs))])
        chans = [in_chans, *outs]
        self.stages = nn.ModuleList()
        for i, stride in enumerate(self.reductions):
            height, dilated = rsu_shape(stride)
            self.stages.append(KANRSU(height, chans[i], mids[i], outs[i], kan_args, dilated))
        self.pool = nn.MaxPool2d(2)


class KANU2Net(SegmentationMixin, nn.Module):
    """U2-Net of KAN convolutions (see the module docstring for layout, outputs and padding).

    Args:
        num_classes: output channels of every logits map; 0 for the finest decoder features.
        in_chans: image channels.
        mid_channels, out_channels: RSU widths of the 6 encoder stages (strides 1..32) then the 5
            decoder stages (strides 16..1).
        basis, degree, norm_layer, basis_options: the KAN convs' basis, degree, norm and options.
        encoder, encoder_pretrained, encoder_kwargs: a timm backbone instead of the RSU encoder, as
            for ``KANUNet``; the decoder then has one RSU stage per skip, with the widths and heights
            the paper gives that stride, and one side output per decoder stage plus the deepest map.
    """

    def __init__(
        self,
        num_classes: int = 1,
        in_chans: int = 3,
        mid_channels: Sequence[int] = (16, 16, 32, 64, 128, 128, 128, 64, 32, 16, 8),
        out_channels: Sequence[int] = (32, 64, 128, 256, 256, 256, 256, 128, 64, 32, 32),
        basis: str = "gram",
        degree: int = 3,
        norm_layer: NormSpec = "batch",
        basis_options: Optional[Dict[str, Any]] = None,
        encoder: Optional[str] = None,
        encoder_pretrained: bool = False,
        encoder_kwargs: Optional[Dict[str, Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if len(mid_channels) != NUM_STAGES or len(out_channels) != NUM_STAGES:
            raise ValueError(f"mid_channels and out_channels need {NUM_STAGES} widths (6 encoder, 5 decoder "
                             f"stages), got {len(mid_channels)} and {len(out_channels)}")
        check_model_args(in_chans, num_classes)
        dd = {"device": device, "dtype": dtype}
        self.num_classes, self.in_chans = num_classes, in_chans
        kan_args = kan_conv_args(basis, degree, norm_layer, basis_options, **dd)
        channels, reductions = self._init_encoder(
            encoder, lambda: _RSUEncoder(in_chans, mid_channels[:6], out_channels[:6], kan_args),
            encoder_pretrained, encoder_kwargs, **dd,
        )
        if reductions[-1] > TOTAL_STRIDE:  # only a timm encoder can reach it
            raise ValueError(f"encoder {encoder!r} reaches stride {reductions[-1]}; KANU2Net's decoder "
                             f"has stages for strides up to {TOTAL_STRIDE // 2}")
        self.pad_multiple = max(TOTAL_STRIDE, reductions[-1])

        # Decoder stage at stride s (deepest skip first) takes the paper's decoder widths for s.
        dec_mids, dec_outs = mid_channels[6:], out_channels[6:]
        self.decoder = nn.ModuleList()
        chs = channels[-1]
        for skip_chs, stride in zip(channels[-2::-1], reductions[-2::-1]):
            i = 4 - (stride.bit_length() - 1)  # the paper's decoder stages run over strides 16, 8, 4, 2, 1
            height, dilated = rsu_shape(stride)
            self.decoder.append(KANRSU(height, chs + skip_chs, dec_mids[i], dec_outs[i], kan_args, dilated))
            chs = dec_outs[i]
        # Side maps come from the decoder stages (finest first) and the deepest encoder map.
        self.side_channels = [stage.conv_in.out_channels for stage in self.decoder][::-1] + [channels[-1]]
        self.num_features = self.head_hidden_size = self.side_channels[0]
        self.grad_checkpointing = False
        self.head = self._make_head(num_classes, **dd)
        self._batch_norm, self._instance_norm = norm_kinds(self)

    def _make_head(self, num_classes: int, **dd: Any) -> Optional[KANU2NetHead]:
        return KANU2NetHead(self.side_channels, num_classes, **dd) if num_classes else None

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head if self.head is not None else nn.Identity()

    def _side_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Padded input -> the side-output features, finest first."""
        skips = self.encoder(x)
        x, features = skips[-1], [skips[-1]]
        for stage, skip in zip(self.decoder, skips[-2::-1]):
            x = torch.cat([_upsample(x, skip.shape[-2:]), skip], dim=1)
            x = checkpoint(stage, x, use_reentrant=False) if self.grad_checkpointing else stage(x)
            features.append(x)
        return features[::-1]

    def _uncropped_maps(self, x: torch.Tensor) -> Tuple[Tuple[torch.Tensor, ...], torch.Size]:
        """(the output maps at the padded size, the input's H x W to crop them to)."""
        size = self._check(x).shape[-2:]  # shapes stay symbolic (no ints, no comparisons) for FX tracing
        x = pad_to_multiple(x, self.pad_multiple)
        features = self._side_features(x)
        if self.head is None:  # features of the finest decoder stage, at the input's resolution
            return (_upsample(features[0], x.shape[-2:]),), size
        return self.head(features, x.shape[-2:]), size

    def forward_all(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(fused, side_1, ..., side_n) logits maps, each (N, num_classes, H, W), in any mode."""
        maps, size = self._uncropped_maps(x)
        return tuple(crop_to(m, size) for m in maps)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """Eval: the fused logits map. Train: (fused, side_1, ..., side_n). See the module docstring."""
        if self.training and self.head is not None:
            return self.forward_all(x)
        # Only the returned map is cropped: a traced graph then ends in its output (timm's FX helpers
        # take the last node for it) and holds no unused crops of the side maps.
        maps, size = self._uncropped_maps(x)
        return crop_to(maps[0], size)


# --- registry -----------------------------------------------------------------------------------

# arch -> (mid, out) widths of the 6 encoder + 5 decoder stages as the paper gives them; the KAN
# models divide them by width_divisor(basis) (tiny: as given).
U2NET_WIDTHS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    "u2net": ((32, 32, 64, 128, 256, 256, 256, 128, 64, 32, 16), (64, 128, 256, 512, 512, 512, 512, 256, 128, 64, 64)),
    "u2net_small": ((16,) * 11, (64,) * 11),
    "u2net_tiny": ((2,) * 11, (8,) * 11),
}
_TINY_ARCHS = ("u2net_tiny",)


def width_divisor(basis: str) -> int:
    """Paper widths / this: half, a quarter for wavelet (its activations grow with C_out x C_in)."""
    return 4 if basis == "wavelet" else 2


def model_args(arch: str, basis: str) -> Dict[str, Any]:
    mids, outs = U2NET_WIDTHS[arch]
    div = 1 if arch in _TINY_ARCHS else width_divisor(basis)
    return dict(mid_channels=tuple(max(1, m // div) for m in mids), out_channels=tuple(o // div for o in outs),
                basis=basis)


_VARIANTS: Dict[str, Tuple[str, str]] = arch_variants(U2NET_WIDTHS)

# The paper trains on 320 px resized images (random 288 crops); the KAN papers are cited with it.
default_cfgs = generate_default_cfgs({
    name: segmentation_cfg(64 if arch in _TINY_ARCHS else 320, "encoder.stages.0.conv_in", "arXiv:2005.09007")
    for name, (arch, _) in _VARIANTS.items()
})


def _create_kan_u2net(variant: str, pretrained: bool = False, **kwargs: Any) -> KANU2Net:
    arch, basis = _VARIANTS[variant]
    return build_model_with_cfg(KANU2Net, variant, pretrained, **{**model_args(arch, basis), **kwargs})


register_entry_points(__name__, _VARIANTS, _create_kan_u2net)
