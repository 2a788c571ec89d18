"""KAN DenseNets: the torchvision/timm DenseNet-BC topology with KAN convolutions for the spatial convs.

DenseNet-121/161/169/201, registered as ``kan_densenet<depth>_<basis>`` for every basis in
``kan_zoo.layers.BASES``, plus ``kan_test_densenet_<basis>`` (one narrow layer per block) for fast tests.

What is KAN and what is plain:
  * the 7x7 stem conv and the 3x3 conv of every dense layer are ``KANConv2d`` with BatchNorm as
    their norm;
  * the 1x1 bottleneck conv of each dense layer and the 1x1 transition convs stay plain
    ``nn.Conv2d`` + ``nn.BatchNorm2d`` (they only mix the concatenated channels, and they hold most of
    a DenseNet's parameters: as KAN convs they would multiply them by the basis size), the final
    ``norm5`` is a plain BatchNorm and the classifier a plain ``nn.Linear``.

torchvision's dense layer is BN-ReLU-conv1x1-BN-ReLU-conv3x3. Here every concatenated feature map
already leaves a KAN conv normalised and activated, so a dense layer is conv1x1 -> BN -> KAN 3x3
(whose basis is the nonlinearity: no ReLU in front of it, it would clip the basis's input), and a
transition is conv1x1 -> BN -> 2x2 average pool.

Widths: the growth rate is half the torchvision one (16; 24 for DenseNet-161), with the same bottleneck
factor (bn_size 4) and stem width (2 x growth). A KAN 3x3 conv with K basis functions has about
(K + 1)x the parameters of a plain one, but in a DenseNet the plain 1x1 convs dominate, so the
parameter counts stay close to the plain DenseNets' at half width. The wavelet basis keeps a
(C_out/groups) x C_in x H x W tensor per conv for backward, so it gets a quarter of the torchvision
growth rate (8; 12 for DenseNet-161). The resulting sizes (params / GMACs at 224 px, convs and
matmuls only; gram, legendre, jacobi and bernstein are equal, chebyshev is a little smaller,
bspline, rbf and relu have 8 functions; plain timm DenseNets for scale):

    ============  ==============  ==============  ==============  ==============
    depth         gram (K=4)      bspline (K=8)   wavelet         plain timm
    ============  ==============  ==============  ==============  ==============
    densenet121   4.4M / 2.22     6.6M / 3.70     0.9M / 0.31     8.0M / 2.83
    densenet161   14.2M / 5.35    20.7M / 8.73    2.7M / 0.76     28.7M / 7.73
    densenet169   7.0M / 2.44     10.0M / 4.00    1.4M / 0.35     14.1M / 3.36
    densenet201   9.1M / 2.78     12.7M / 4.47    1.9M / 0.42     20.0M / 4.29
    ============  ==============  ==============  ==============  ==============

Every variant: ``scripts/model_table.py`` (the table in docs/models.md). The wavelet GMACs leave out its
elementwise wavelet evaluation, which is what it spends its time on.

The network needs inputs of at least ``min_input_size`` = 32 px per side (its total stride); smaller
inputs raise a ValueError naming that size.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models._builder import build_model_with_cfg
from timm.models._manipulate import MATCH_PREV_GROUP
from timm.models._registry import generate_default_cfgs
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import KANConv2d
from ._common import FeatureTapsMixin, PooledClassifierMixin, check_min_input_size, kan_conv_args, run_stages
from ._registry import arch_variants, classifier_cfg, register_entry_points

__all__ = ["KANDenseNet", "KANDenseLayer", "KANDenseBlock", "KANDenseTransition"]


class KANDenseLayer(nn.Module):
    """cat(features) -> 1x1 conv -> BN -> 3x3 KAN conv (own BN and activation): ``growth_rate`` new channels."""

    def __init__(
        self,
        in_chs: int,
        growth_rate: int,
        bn_size: int,
        kan_args: Dict[str, Any],
        drop_rate: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        inner = bn_size * growth_rate
        self.conv1 = nn.Conv2d(in_chs, inner, 1, bias=False, **dd)
        self.norm1 = nn.BatchNorm2d(inner, **dd)
        self.conv2 = KANConv2d(inner, growth_rate, 3, padding=1, **kan_args, **dd)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.grad_checkpointing = False

    def _layer(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(torch.cat(features, 1))))

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # Recomputing the concat and the basis expansion in backward is where a DenseNet's memory goes.
            x = checkpoint(self._layer, *features, use_reentrant=False)
        else:
            x = self._layer(*features)
        return self.drop(x)


class KANDenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each seeing the concatenation of the input and all earlier outputs."""

    def __init__(
        self,
        num_layers: int,
        in_chs: int,
        growth_rate: int,
        bn_size: int,
        kan_args: Dict[str, Any],
        drop_rate: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = KANDenseLayer(
                in_chs + i * growth_rate, growth_rate, bn_size, kan_args, drop_rate, device=device, dtype=dtype
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class KANDenseTransition(nn.Sequential):
    """1x1 conv -> BN -> 2x2 average pool: halves the channels and the resolution."""

    def __init__(
        self, in_chs: int, out_chs: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(in_chs, out_chs, 1, bias=False, **dd)),
            ("norm", nn.BatchNorm2d(out_chs, **dd)),
            ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
        ]))


class KANDenseNet(FeatureTapsMixin, PooledClassifierMixin, nn.Module):
    """DenseNet-BC with KAN spatial convolutions (see the module docstring for the design).

    Args:
        growth_rate: channels each dense layer adds; the stem has 2 x growth_rate.
        block_config: dense layers per block (four blocks).
        bn_size: the 1x1 bottleneck has bn_size x growth_rate channels.
        basis, degree, basis_options: the KAN convs' basis (kan_zoo.layers.BASES), its degree and options.
        num_classes, in_chans, global_pool: as in timm's DenseNet.
        drop_rate: dropout before the classifier; proj_drop_rate: dropout after each dense layer.
    """

    min_input_size = 32  # total stride: the three 2x2 average pools need a map of >= 8 px after the stem
    classifier_name = "classifier"

    def __init__(
        self,
        growth_rate: int = 16,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        basis: str = "gram",
        degree: int = 3,
        basis_options: Optional[Dict[str, Any]] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if len(block_config) != 4:
            raise ValueError(f"block_config needs 4 dense blocks, got {tuple(block_config)}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes, self.in_chans = num_classes, in_chans
        kan_args = kan_conv_args(basis, degree, "batch", basis_options)

        num_chs = 2 * growth_rate
        self.features = nn.Sequential(OrderedDict([
            ("conv0", KANConv2d(in_chans, num_chs, 7, stride=2, padding=3, **kan_args, **dd)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        self.feature_info = [dict(num_chs=num_chs, reduction=2, module="features.conv0")]
        reduction = 4
        for i, num_layers in enumerate(block_config):
            block = KANDenseBlock(num_layers, num_chs, growth_rate, bn_size, kan_args, proj_drop_rate, **dd)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_chs += num_layers * growth_rate
            if i == len(block_config) - 1:
                break
            # The tap is the block output, before the transition halves channels and resolution.
            self.feature_info.append(dict(num_chs=num_chs, reduction=reduction, module=f"features.denseblock{i + 1}"))
            self.features.add_module(f"transition{i + 1}", KANDenseTransition(num_chs, num_chs // 2, **dd))
            num_chs, reduction = num_chs // 2, reduction * 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_chs, **dd))
        self.feature_info.append(dict(num_chs=num_chs, reduction=reduction, module="features.norm5"))
        names = [n for n, _ in self.features.named_children()]
        # Index in self.features of each feature tap, for forward_intermediates.
        self.feature_ends = [names.index(f["module"].split(".", 1)[1]) for f in self.feature_info]

        self.num_features = num_chs
        self._create_head(num_classes, global_pool, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        for m in self.modules():  # the KAN convs initialise themselves
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^features\.conv0|^features\.pool0",
            blocks=r"^features\.(?:denseblock|transition)(\d+)" if coarse else [
                (r"^features\.denseblock(\d+)\.denselayer(\d+)", None),
                (r"^features\.transition(\d+)", MATCH_PREV_GROUP),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.features.modules():
            if isinstance(m, KANDenseLayer):
                m.grad_checkpointing = enable

    def _num_taps(self) -> int:
        return len(self.feature_ends)

    def _forward_taps(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        # Tap 0 is the stem conv (stride 2), 1-3 the first three dense blocks (before their
        # transitions), 4 the final norm. The dense layers checkpoint themselves.
        x = check_min_input_size(x, self.min_input_size, type(self).__name__)
        layers = self.features[: self.feature_ends[max_index] + 1] if stop_early else self.features
        return run_stages(layers, x, [self.feature_ends[i] for i in take_indices])

    def _prune_taps(self, max_index: int) -> None:
        self.features = self.features[: self.feature_ends[max_index] + 1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(check_min_input_size(x, self.min_input_size, type(self).__name__))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# arch -> (torchvision growth rate, dense layers per block, bn_size). The KAN growth rate is the
# torchvision one divided by width_divisor(basis): one table for the names, cfgs and docs.
ARCHS: Dict[str, Tuple[int, Tuple[int, ...], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 4),
    "densenet161": (48, (6, 12, 36, 24), 4),
    "densenet169": (32, (6, 12, 32, 32), 4),
    "densenet201": (32, (6, 12, 48, 32), 4),
    "test_densenet": (16, (1, 1, 1, 1), 2),
}
_TEST_ARCHS = ("test_densenet",)


def width_divisor(basis: str) -> int:
    """KAN growth rate = torchvision growth rate / this (wavelet: narrower, see the docstring)."""
    return 4 if basis == "wavelet" else 2


def model_args(arch: str, basis: str) -> Dict[str, Any]:
    """The KANDenseNet keyword arguments of ``kan_<arch>_<basis>``."""
    growth, blocks, bn_size = ARCHS[arch]
    return dict(growth_rate=growth // width_divisor(basis), block_config=blocks, bn_size=bn_size, basis=basis)


_VARIANTS: Dict[str, Tuple[str, str]] = arch_variants(ARCHS)

# No weights exist for these families yet: the cfgs carry no url/hf_hub_id, only the preprocessing.
# The KAN papers are cited with the DenseNet paper whose topology this is.
default_cfgs = generate_default_cfgs({
    name: classifier_cfg("features.conv0", "classifier", "arXiv:1608.06993", tiny=arch in _TEST_ARCHS)
    for name, (arch, _) in _VARIANTS.items()
})


def _create_kan_densenet(variant: str, pretrained: bool = False, **kwargs: Any) -> KANDenseNet:
    arch, basis = _VARIANTS[variant]
    return build_model_with_cfg(
        KANDenseNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True),
        **{**model_args(arch, basis), **kwargs},
    )


register_entry_points(__name__, _VARIANTS, _create_kan_densenet)
