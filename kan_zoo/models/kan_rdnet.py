"""KAN RDNets: timm's RDNet ("DenseNets Reloaded", Kim et al. 2024) with KAN convolutions.

RDNet-tiny/small/base/large, registered as ``kan_rdnet_<size>_<basis>`` for every basis in
``kan_zoo.layers.BASES``, plus ``kan_test_rdnet_<basis>`` (one narrow block per stage) for fast tests.

The topology is timm's ``rdnet_*``: a patchify stem (4x4 conv, stride 4), stages of dense blocks whose
outputs are concatenated onto the stage input, a transition conv in front of every stage but the first
(halving the channels; 2x2 stride 2 where the stage downsamples, else 1x1), and a pool -> LayerNorm ->
linear head. A dense block is a depth-wise 7x7 conv, a 1x1 conv to 4x its input width, a 1x1 conv to
the growth rate, in later stages an effective squeeze-excitation (x * hard_sigmoid(fc(mean(x)))), and a
layer scale (1e-6 at init).

What is KAN and what is plain, as in the research code (torch-conv-kan's KAGN RDNet): every conv is a
KAN conv, i.e. the stem, each block's depth-wise 7x7 and both 1x1 convs, the ESE's fc and the
transitions; only the head (LayerNorm + ``nn.Linear``) is plain. In an RDNet the 1x1 convs are the
network: they hold 87% of timm's rdnet_tiny weights, the depth-wise convs 1.6%, so leaving them plain,
as kan_densenet and kan_resnet do with theirs, would leave under a tenth of the net in KAN convs. Each
KAN conv ends in its own norm and output activation (timm's LayerNorm2d, RDNet's norm), so blocks add
no GELU or norm of their own. One exception to the norm: a basis that normalises its INPUT (rbf) gets
BatchNorm in the stem, as a per-pixel LayerNorm over the 3 (or 1) image channels would erase the
pixel's intensity.
``bottleneck=True`` turns every KAN conv but the depth-wise one into ``BottleneckKANConv2d`` (the
research code's default; gram-like bases only, rbf and wavelet have no bottleneck form).

Widths: a KAN conv with K basis functions has about (K + 1)x the weights of a plain conv, so the stem
width and growth rates are half of timm's (a quarter for the wavelet basis, whose work grows with
(C_out/groups) x C_in x H x W per conv), with timm's bottleneck ratio (4) and transition
compression (0.5). A quarter of timm's weights times K + 1: ~1.25x for degree-3 polynomial bases,
~2.25x for the 8-function grid bases (params / GMACs at 224 px, convs and matmuls only; legendre, jacobi
and bernstein equal gram, chebyshev has no base branch):

    ============  ==============  ==============  ==============  ==============
    size          gram (K=4)      bspline (K=8)   wavelet         plain timm
    ============  ==============  ==============  ==============  ==============
    rdnet_tiny    29.1M / 6.40    51.9M / 11.52   9.3M / 1.50     23.9M / 5.03
    rdnet_small   62.3M / 11.04   111.5M / 19.88  20.2M / 2.60    50.4M / 8.71
    rdnet_base    106.1M / 19.08  190.1M / 34.34  34.0M / 4.46    87.5M / 15.36
    rdnet_large   231.0M / 43.49  414.9M / 78.28  77.1M / 10.49   186.3M / 34.68
    ============  ==============  ==============  ==============  ==============

With ``bottleneck=True`` the gram nets come to about timm's size (tiny 23.7M, large 193.2M) and the
bspline ones to 1.35x (tiny 32.2M). The wavelet nets evaluate their wavelet (C_out/groups) x C_in times
per output position, which in an RDNet's wide 1x1 convs is 286M evaluations per 224 px image for
rdnet_tiny (kan_resnet18_wavelet: 12M); those evaluations are not in the GMACs.

Every variant: ``scripts/model_table.py``.

The feature taps are timm's: the end of each stage that precedes a downsampling stage, and the last
stage (strides 4, 8, 16, 32). The network needs inputs of at least ``min_input_size`` px per side
(patch size x 2 per downsampling stage: 32 for every registered size); smaller inputs raise a ValueError.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import DropPath, LayerNorm2d, NormMlpClassifierHead, calculate_drop_path_rates, get_device_dtype
from timm.models._builder import build_model_with_cfg
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs
from torch import nn

from ..layers import KANConv2d, get_basis_class
from ..layers.bottleneck import kan_conv_class
from ._common import FeatureTapsMixin, HeadFcMixin, check_min_input_size, kan_conv_args, run_stages
from ._registry import arch_variants, classifier_cfg, register_entry_points

__all__ = ["KANRDNet", "KANRDNetStage", "KANRDNetBlock", "KANEffectiveSE"]

# conv(in_chs, out_chs, kernel_size, **conv_kwargs) -> a KAN conv with the model's basis, norm and dtype.
ConvFactory = Callable[..., nn.Module]
BLOCK_TYPES = ("block", "blockese")  # timm's names: a dense block without / with effective SE


class KANEffectiveSE(nn.Module):
    """Effective squeeze-excitation (Lee & Park 2020) with a 1x1 KAN conv: x * hard_sigmoid(fc(mean(x)))."""

    def __init__(self, channels: int, conv: ConvFactory) -> None:
        super().__init__()
        self.fc = conv(channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class KANRDNetBlock(nn.Module):
    """cat(features) -> depth-wise 7x7 KAN conv -> 1x1 KAN conv (inter_chs) -> 1x1 KAN conv (growth_rate)
    [-> ESE] -> layer scale: ``growth_rate`` new channels."""

    def __init__(
        self,
        in_chs: int,
        inter_chs: int,
        growth_rate: int,
        depthwise: ConvFactory,
        pointwise: ConvFactory,
        use_ese: bool = False,
        ls_init_value: float = 1e-6,
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.conv_dw = depthwise(in_chs, in_chs, 7, padding=3, groups=in_chs)
        self.conv_expand = pointwise(in_chs, inter_chs, 1)
        self.conv_project = pointwise(inter_chs, growth_rate, 1)
        self.se = KANEffectiveSE(growth_rate, pointwise) if use_ese else nn.Identity()
        self.gamma = (
            nn.Parameter(torch.full((growth_rate,), ls_init_value, device=device, dtype=dtype))
            if ls_init_value > 0 else None
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.drop = nn.Dropout(proj_drop_rate) if proj_drop_rate > 0 else nn.Identity()

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        x = self.se(self.conv_project(self.conv_expand(self.conv_dw(torch.cat(features, 1)))))
        if self.gamma is not None:
            x = x * self.gamma.reshape(1, -1, 1, 1)
        return self.drop(self.drop_path(x))


class KANRDNetStage(nn.Module):
    """[transition KAN conv] -> dense blocks; returns the transition output concatenated with every block's.

    ``transition``: (output channels, stride) of the transition conv (kernel = stride), or None (stage 0).
    """

    def __init__(
        self,
        in_chs: int,
        transition: Optional[Tuple[int, int]],
        num_blocks: int,
        growth_rate: int,
        bottleneck_width_ratio: float,
        depthwise: ConvFactory,
        pointwise: ConvFactory,
        use_ese: bool = False,
        ls_init_value: float = 1e-6,
        drop_path_rates: Sequence[float] = (),
        proj_drop_rate: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if transition is None:
            self.transition: nn.Module = nn.Identity()
        else:
            out_chs, stride = transition
            self.transition = pointwise(in_chs, out_chs, stride, stride=stride)
            in_chs = out_chs
        self.blocks = nn.ModuleList()
        for i in range(num_blocks):
            inter_chs = int(in_chs * bottleneck_width_ratio / 8) * 8  # timm's rounding to multiples of 8
            self.blocks.append(KANRDNetBlock(
                in_chs, inter_chs, growth_rate, depthwise, pointwise, use_ese, ls_init_value,
                drop_path_rates[i] if drop_path_rates else 0.0, proj_drop_rate, device=device, dtype=dtype,
            ))
            in_chs += growth_rate
        self.out_chs = in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.transition(x)]
        for block in self.blocks:
            features.append(block(features))
        return torch.cat(features, 1)


class KANRDNet(FeatureTapsMixin, HeadFcMixin, nn.Module):
    """RDNet with KAN convolutions (see the module docstring for the design).

    Args:
        num_init_features: stem width; patch_size: its kernel and stride.
        growth_rates, num_blocks_list, is_downsample_block, block_type: per stage, as in timm's RDNet
            (block_type "Block" or "BlockESE"; the first stage has no transition, so is_downsample_block[0]
            is ignored); default: timm's rdnet_tiny stages at the growth rates given.
        bottleneck_width_ratio: a block's first 1x1 conv widens its input this much (rounded down to 8s).
        transition_compression_ratio: a transition keeps this fraction of the channels (rounded down to 8s).
        ls_init_value: initial layer scale of every block's output (0: none).
        basis, degree, basis_options: the KAN convs' basis (kan_zoo.layers.BASES), its degree and options.
        bottleneck: BottleneckKANConv2d for every KAN conv but the depth-wise ones (as the research code).
        num_classes, in_chans, global_pool: as in timm's RDNet.
        drop_rate: dropout before the classifier; proj_drop_rate: after each block; drop_path_rate:
            stochastic depth, the same within a stage and rising linearly over the stages.
    """

    def __init__(
        self,
        num_init_features: int = 32,
        growth_rates: Sequence[int] = (32, 52, 64, 64, 64, 64, 112),
        num_blocks_list: Sequence[int] = (3,) * 7,
        is_downsample_block: Sequence[Optional[bool]] = (None, True, True, False, False, False, True),
        block_type: Sequence[str] = ("Block",) * 2 + ("BlockESE",) * 5,
        bottleneck_width_ratio: float = 4.0,
        transition_compression_ratio: float = 0.5,
        ls_init_value: float = 1e-6,
        patch_size: int = 4,
        basis: str = "gram",
        degree: int = 3,
        basis_options: Optional[Dict[str, Any]] = None,
        bottleneck: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        num_stages = len(growth_rates)
        if not num_stages or not len(num_blocks_list) == len(is_downsample_block) == len(block_type) == num_stages:
            raise ValueError(
                "growth_rates, num_blocks_list, is_downsample_block and block_type need one entry per stage, got "
                f"{len(growth_rates)}, {len(num_blocks_list)}, {len(is_downsample_block)} and {len(block_type)}"
            )
        block_type = [str(t).lower() for t in block_type]
        if any(t not in BLOCK_TYPES for t in block_type):
            raise ValueError(f"block_type entries must be 'Block' or 'BlockESE', got {block_type}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes, self.in_chans, self.grad_checkpointing = num_classes, in_chans, False

        kan_args = kan_conv_args(basis, degree, LayerNorm2d, basis_options, **dd)
        conv_cls = kan_conv_class(2, bottleneck)
        depthwise = partial(KANConv2d, **kan_args)  # a bottleneck of a depth-wise conv would be 1 channel wide
        pointwise = partial(conv_cls, **kan_args)
        # A per-pixel LayerNorm over the image channels would erase the intensity an input norm sees.
        stem_args = dict(kan_args, norm_layer="batch") if get_basis_class(basis).normalizes_input else kan_args
        self.stem = conv_cls(in_chans, num_init_features, patch_size, stride=patch_size, **stem_args)

        dp_rates = calculate_drop_path_rates(drop_path_rate, list(num_blocks_list), stagewise=True)
        self.feature_info: List[Dict[str, Any]] = []
        stages, num_features, reduction = [], num_init_features, patch_size
        for i in range(num_stages):
            transition = None
            if i:
                stride = 2 if is_downsample_block[i] else 1
                compressed = int(num_features * transition_compression_ratio / 8) * 8
                if compressed < 1:
                    raise ValueError(
                        f"stage {i}'s transition would keep {compressed} of {num_features} channels "
                        f"(compression {transition_compression_ratio}, rounded down to multiples of 8): widen the net"
                    )
                transition, reduction = (compressed, stride), reduction * stride
            stage = KANRDNetStage(
                num_features, transition, num_blocks_list[i], growth_rates[i], bottleneck_width_ratio,
                depthwise, pointwise, block_type[i] == "blockese", ls_init_value, dp_rates[i], proj_drop_rate, **dd,
            )
            stages.append(stage)
            num_features = stage.out_chs
            if i == num_stages - 1 or is_downsample_block[i + 1]:
                self.feature_info.append(dict(num_chs=num_features, reduction=reduction, module=f"dense_stages.{i}"))
        self.dense_stages = nn.Sequential(*stages)
        # Index in dense_stages of each feature tap; the input must leave the last stage at least 1 px wide.
        self.stage_ends = [int(f["module"].rsplit(".", 1)[1]) for f in self.feature_info]
        self.min_input_size = reduction

        self.num_features = num_features
        self.head = NormMlpClassifierHead(num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        if isinstance(self.head.fc, nn.Linear):
            nn.init.zeros_(self.head.fc.bias)  # as timm's RDNet

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        # Fine: a stage's transition (suffix 0) sorts before its blocks (stage, block, 1).
        return dict(
            stem=r"^stem\.",
            blocks=r"^dense_stages\.(\d+)" if coarse else [
                (r"^dense_stages\.(\d+)\.transition\.", (0,)),
                (r"^dense_stages\.(\d+)\.blocks\.(\d+)\.", (1,)),
            ],
        )

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        """A new classifier for ``num_classes`` (0: none); ``reset_other`` also drops the head's LayerNorm."""
        self.num_classes = num_classes
        self.head.reset(
            num_classes, global_pool, reset_other=reset_other, in_features=self.num_features, **get_device_dtype(self)
        )
        self.head_hidden_size = self.head.num_features

    def _num_taps(self) -> int:
        return len(self.stage_ends)

    def _forward_taps(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x = self.stem(check_min_input_size(x, self.min_input_size, type(self).__name__))
        stages = self.dense_stages[: self.stage_ends[max_index] + 1] if stop_early else self.dense_stages
        return run_stages(stages, x, [self.stage_ends[i] for i in take_indices], self.grad_checkpointing)

    def _prune_taps(self, max_index: int) -> None:
        self.dense_stages = self.dense_stages[: self.stage_ends[max_index] + 1]

    def _prune_head(self, max_index: int, prune_head: bool) -> None:
        last = max_index == len(self.feature_info) - 1
        if not last:
            # The features now end at an earlier tap: the head's norm was sized for the last one.
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or not last:
            self.reset_classifier(0, "", reset_other=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(check_min_input_size(x, self.min_input_size, type(self).__name__))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.dense_stages, x)
        return self.dense_stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# arch -> (timm stem width, timm growth rates, blocks per stage, downsampling stages, stages with ESE,
# bottleneck width ratio). The KAN widths are timm's divided by width_divisor(basis): one table for the
# names, cfgs and docs.
_SMALL_DOWN = (False, True, True, False, False, False, False, False, False, True, False)
ARCHS: Dict[str, Tuple[int, Tuple[int, ...], Tuple[int, ...], Tuple[bool, ...], int, float]] = {
    "rdnet_tiny": (64, (64, 104, 128, 128, 128, 128, 224), (3,) * 7,
                   (False, True, True, False, False, False, True), 2, 4.0),
    "rdnet_small": (72, (64, 128) + (128,) * 7 + (240,) * 2, (3,) * 11, _SMALL_DOWN, 2, 4.0),
    "rdnet_base": (120, (96, 128) + (168,) * 7 + (336,) * 2, (3,) * 11, _SMALL_DOWN, 2, 4.0),
    "rdnet_large": (144, (128, 192) + (256,) * 8 + (360,) * 2, (3,) * 12,
                    (False, True, True, False, False, False, False, False, False, False, True, False), 2, 4.0),
    "test_rdnet": (32, (32, 48, 48, 64), (1,) * 4, (False, True, True, True), 2, 2.0),
}
_TEST_ARCHS = ("test_rdnet",)


def width_divisor(basis: str) -> int:
    """KAN stem width and growth rates are timm's divided by this (wavelet: narrower, see the docstring)."""
    return 4 if basis == "wavelet" else 2


def model_args(arch: str, basis: str) -> Dict[str, Any]:
    """The KANRDNet keyword arguments of ``kan_<arch>_<basis>``."""
    stem, growth, blocks, downsample, plain_stages, ratio = ARCHS[arch]
    div = width_divisor(basis)
    return dict(
        num_init_features=stem // div, growth_rates=tuple(g // div for g in growth), num_blocks_list=blocks,
        is_downsample_block=downsample, bottleneck_width_ratio=ratio, basis=basis,
        block_type=("Block",) * plain_stages + ("BlockESE",) * (len(growth) - plain_stages),
    )


_VARIANTS: Dict[str, Tuple[str, str]] = arch_variants(ARCHS)

# No weights exist for this family yet: the cfgs carry no url/hf_hub_id, only the preprocessing
# (timm's rdnet evaluates at crop 0.9, bicubic). The KAN papers are cited with the RDNet paper.
default_cfgs = generate_default_cfgs({
    name: {
        **classifier_cfg("stem", "head.fc", "arXiv:2403.19588", tiny=arch in _TEST_ARCHS),
        **({} if arch in _TEST_ARCHS else dict(crop_pct=0.9, interpolation="bicubic")),
    }
    for name, (arch, _) in _VARIANTS.items()
})


def _create_kan_rdnet(variant: str, pretrained: bool = False, **kwargs: Any) -> KANRDNet:
    arch, basis = _VARIANTS[variant]
    return build_model_with_cfg(
        KANRDNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **{**model_args(arch, basis), **kwargs},
    )


register_entry_points(__name__, _VARIANTS, _create_kan_rdnet)
