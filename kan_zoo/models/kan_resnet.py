"""KAN ResNets: the torchvision/timm ResNet topology with KAN convolutions for the spatial convs.

ResNet-18/34 (basic blocks) and 50/101/152 (bottleneck blocks, stride in the 3x3 as in torchvision
"v1.5"), registered as ``kan_resnet<depth>_<basis>`` for every basis in ``kan_zoo.layers.BASES``, plus
``kan_test_resnet_<basis>`` (one narrow basic block per stage) for fast tests.

What is KAN and what is plain:
  * every spatial conv is a ``KANConv2d`` with BatchNorm as its norm: the 7x7 stem and the 3x3 convs;
  * the 1x1 convs of the bottleneck blocks and the 1x1 downsample projections stay plain
    ``nn.Conv2d`` + ``nn.BatchNorm2d`` (they only mix channels; a KAN 1x1 would multiply their
    parameters by the basis size for little gain), and the classifier is a plain ``nn.Linear``.

A KAN conv already ends in its norm and output activation, so blocks add none of their own, and no
activation follows the residual add either: the next KAN conv applies learned univariate functions
to the sum (most bases after a tanh), and a ReLU there would hide half of their domain.

Widths: a KAN conv with a basis of K functions (plus the base branch) has about (K + 1)x the
parameters and MACs of a plain conv, so every width is half the torchvision width (stem 32, stages
32/64/128/256 x block expansion): a quarter of the plain parameters times (K + 1) = 5 for a
degree-3 polynomial basis, so ~5/4 of the plain count for basic blocks, and below the plain count
for bottleneck blocks, whose plain 1x1 convs just shrink 4x. The wavelet basis is not separable:
its activations grow with C_out/groups (it keeps (C_out/groups) x C_in x H x W tensors per conv for
backward), so it gets a quarter of the torchvision widths (stem 16, stages 16/32/64/128): summed
over ResNet-18 at 224 px, one such tensor is 18M elements per image at quarter width against 66M
(~250 MB fp32, and backward keeps several) at half width.

The resulting sizes (params / GMACs at 224 px, convs and matmuls only; legendre, jacobi and
bernstein equal gram; chebyshev has no base branch and is smaller; bspline, rbf and relu have 8
functions; plain timm ResNets for scale):

    ============  ==============  ==============  ==============  ==============
    depth         gram (K=4)      bspline (K=8)   wavelet         plain timm
    ============  ==============  ==============  ==============  ==============
    resnet18      14.1M / 2.40    25.1M / 4.31    1.8M / 0.29     11.7M / 1.81
    resnet34      26.7M / 4.71    47.8M / 8.47    3.2M / 0.53     21.8M / 3.66
    resnet50      18.3M / 3.14    29.6M / 5.22    2.9M / 0.44     25.6M / 4.09
    resnet101     33.0M / 6.03    54.4M / 10.08   5.0M / 0.81     44.5M / 7.80
    resnet152     45.2M / 8.92    74.8M / 14.94   6.6M / 1.18     60.2M / 11.51
    ============  ==============  ==============  ==============  ==============

Every variant: ``scripts/model_table.py`` (the table in docs/models.md). The wavelet GMACs leave out its
elementwise wavelet evaluation, which is what it spends its time on.

The network needs inputs of at least ``min_input_size`` = 32 px per side (its total stride); smaller
inputs raise a ValueError naming that size.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from timm.layers import DropPath
from timm.models._builder import build_model_with_cfg
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs
from torch import nn

from ..layers import KANConv2d
from ._common import FeatureTapsMixin, PooledClassifierMixin, check_min_input_size, kan_conv_args, run_stages
from ._registry import arch_variants, classifier_cfg, register_entry_points

__all__ = ["KANResNet", "KANBasicBlock", "KANBottleneck", "check_min_input_size"]


def _zero_init_kan_norm(conv: KANConv2d) -> None:
    # A zero BatchNorm scale makes the KAN conv output act(0) = 0 for every basis output activation
    # (SiLU, identity, PReLU), so the residual branch starts as the identity. Bases whose norm runs
    # on the INPUT (rbf) would still output a constant, so they are left alone.
    if not conv.basis.normalizes_input and isinstance(conv.norm, nn.BatchNorm2d):
        nn.init.zeros_(conv.norm.weight)


class _KANResidualBlock(nn.Module):
    """``drop_path(branch(x)) + shortcut(x)``; a subclass builds the branch in ``_make_branch``.

    The branch is built first, then ``downsample`` and ``drop_path`` are registered, so the
    parameters (and the init order of a seeded model) come in the order of the blocks' layers.
    """

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        kan_args: Optional[Dict[str, Any]] = None,
        drop_path_rate: float = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self._make_branch(in_chs, planes, stride, kan_args or {}, {"device": device, "dtype": dtype})
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _make_branch(self, in_chs: int, planes: int, stride: int, kan_args: Dict[str, Any], dd: Dict[str, Any]) -> None:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def zero_init_last(self) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.drop_path(self._branch(x)) + shortcut


class KANBasicBlock(_KANResidualBlock):
    """x + conv2(conv1(x)): two 3x3 KAN convs (each with its own BatchNorm and activation)."""

    expansion = 1

    def _make_branch(self, in_chs: int, planes: int, stride: int, kan_args: Dict[str, Any], dd: Dict[str, Any]) -> None:
        self.conv1 = KANConv2d(in_chs, planes, 3, stride=stride, padding=1, **kan_args, **dd)
        self.conv2 = KANConv2d(planes, planes, 3, padding=1, **kan_args, **dd)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))

    def zero_init_last(self) -> None:
        _zero_init_kan_norm(self.conv2)


class KANBottleneck(_KANResidualBlock):
    """x + bn3(conv3(conv2(bn1(conv1(x))))): plain 1x1 squeeze, 3x3 KAN conv, plain 1x1 expand.

    No activation follows bn1: the KAN conv's basis is the nonlinearity (a ReLU would clip its input).
    """

    expansion = 4

    def _make_branch(self, in_chs: int, planes: int, stride: int, kan_args: Dict[str, Any], dd: Dict[str, Any]) -> None:
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.conv2 = KANConv2d(planes, planes, 3, stride=stride, padding=1, **kan_args, **dd)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(out_chs, **dd)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(self.conv2(self.bn1(self.conv1(x)))))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


BLOCKS: Dict[str, Type[nn.Module]] = {"basic": KANBasicBlock, "bottleneck": KANBottleneck}


class KANResNet(FeatureTapsMixin, PooledClassifierMixin, nn.Module):
    """ResNet with KAN spatial convolutions (see the module docstring for the design).

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage (four stages).
        channels: block widths per stage ("planes"; bottleneck outputs are 4x that).
        stem_width: output channels of the 7x7 stride-2 KAN stem conv.
        basis, degree, basis_options: the KAN convs' basis (kan_zoo.layers.BASES), its degree and options.
        num_classes, in_chans, global_pool, drop_rate: as in timm's ResNet (drop_rate is before the classifier).
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
        zero_init_last: zero the last norm scale of every residual branch.
    """

    min_input_size = 32  # total stride: smaller inputs leave the last stage with nothing to see

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        channels: Sequence[int] = (32, 64, 128, 256),
        stem_width: int = 32,
        basis: str = "gram",
        degree: int = 3,
        basis_options: Optional[Dict[str, Any]] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if len(layers) != 4 or len(channels) != 4:
            raise ValueError(f"layers and channels need 4 stages, got {tuple(layers)} and {tuple(channels)}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.grad_checkpointing = False
        kan_args = kan_conv_args(basis, degree, "batch", basis_options)

        self.conv1 = KANConv2d(in_chans, stem_width, 7, stride=2, padding=3, **kan_args, **dd)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=stem_width, reduction=2, module="conv1")]

        block_cls = BLOCKS[block]
        total_blocks, block_idx = sum(layers), 0
        in_chs, reduction = stem_width, 4
        for stage_idx, (depth, planes) in enumerate(zip(layers, channels)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            out_chs = planes * block_cls.expansion
            blocks = []
            for i in range(depth):
                downsample = None
                if i == 0 and (stride != 1 or in_chs != out_chs):
                    downsample = nn.Sequential(
                        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd), nn.BatchNorm2d(out_chs, **dd)
                    )
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(block_cls(
                    in_chs, planes, stride if i == 0 else 1, downsample, kan_args, drop_path_rate=dpr, **dd
                ))
                in_chs, block_idx = out_chs, block_idx + 1
            self.add_module(f"layer{stage_idx + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"layer{stage_idx + 1}"))

        self.num_features = in_chs
        self._create_head(num_classes, global_pool, **dd)
        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """Kaiming init of the plain convs (the KAN convs initialise themselves), optional zero-init-last."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, _KANResidualBlock):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^conv1|^maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def _stages(self) -> List[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _forward_taps(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        # Tap 0 is the stem conv (stride 2), taps 1-4 the stages (strides 4-32).
        x = self.conv1(check_min_input_size(x, self.min_input_size, type(self).__name__))
        intermediates = [x] if 0 in take_indices else []
        stages = self._stages()[:max_index] if stop_early else self._stages()
        x, taps = run_stages(stages, self.maxpool(x), take_indices, self.grad_checkpointing, start=1)
        return x, intermediates + taps

    def _prune_taps(self, max_index: int) -> None:
        for i in range(max_index, 4):
            setattr(self, f"layer{i + 1}", nn.Sequential())  # empty Sequential keeps forward_features working
        if max_index == 0:
            self.maxpool = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(check_min_input_size(x, self.min_input_size, type(self).__name__)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self._stages(), x, flatten=True)
        for stage in self._stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# arch -> (block, blocks per stage, torchvision stage widths, torchvision stem width). The KAN widths are
# these divided by width_divisor(basis): one table, so the names, cfgs and docs cannot drift apart.
ARCHS: Dict[str, Tuple[str, Tuple[int, ...], Tuple[int, ...], int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), (64, 128, 256, 512), 64),
    "test_resnet": ("basic", (1, 1, 1, 1), (16, 16, 32, 32), 16),
}
_TEST_ARCHS = ("test_resnet",)


def width_divisor(basis: str) -> int:
    """KAN widths are the torchvision widths divided by this (wavelet: narrower, see the docstring)."""
    return 4 if basis == "wavelet" else 2


def model_args(arch: str, basis: str) -> Dict[str, Any]:
    """The KANResNet keyword arguments of ``kan_<arch>_<basis>``."""
    block, layers, widths, stem = ARCHS[arch]
    div = width_divisor(basis)
    channels = tuple(w // div for w in widths)
    return dict(block=block, layers=layers, channels=channels, stem_width=stem // div, basis=basis)


_VARIANTS: Dict[str, Tuple[str, str]] = arch_variants(ARCHS)

# No weights exist for these families yet: the cfgs carry no url/hf_hub_id, only the preprocessing.
# The KAN papers are cited with the ResNet paper whose topology this is.
default_cfgs = generate_default_cfgs({
    name: classifier_cfg("conv1", "fc", "arXiv:1512.03385", tiny=arch in _TEST_ARCHS)
    for name, (arch, _) in _VARIANTS.items()
})


def _create_kan_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> KANResNet:
    arch, basis = _VARIANTS[variant]
    return build_model_with_cfg(KANResNet, variant, pretrained, **{**model_args(arch, basis), **kwargs})


register_entry_points(__name__, _VARIANTS, _create_kan_resnet)
