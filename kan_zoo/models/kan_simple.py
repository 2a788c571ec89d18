"""The seeds' small baselines for MNIST / CIFAR: four or eight KAN convs, and their plain-conv twins.

    kan_simple4_<basis>   KAN 3x3 convs of 32, 64, 128, 256 channels
    kan_simple8_<basis>   KAN 3x3 convs of 16, 32, 64, 128, 256, 256, 512, 512 channels
    kan_simple{4,8}_conv  the same stacks of plain conv -> BatchNorm -> ReLU, for the KAN-vs-CNN table

Layout (``stages`` groups the layers by resolution; the head is ``head.fc``)::

    simple4: conv32 | conv64/2 | conv128/2, conv256            reductions 1, 2, 4
    simple8: conv16 | conv32/2 | conv64/2, conv128 | conv256/2, conv256, conv512, conv512   1, 2, 4, 8
    head:    global average pool -> dropout 0.5 -> linear

Downsampling: the seed's paper describes dilation for the second and third layers; its released
code downsamples them with stride 2, which is what is implemented here (simple8 strides its fifth
layer too). Dropout 0.25 sits before every conv but the first, identically in the KAN and plain
nets, so the only difference between twins is the layer. KAN layers use BatchNorm (small data
trains faster so than with InstanceNorm) and degree 3 (spline order, ReLU-KAN k); rbf uses its
own input norm and grid of 8.

Defaults are MNIST's: ``in_chans=1``, ``num_classes=10``, 28 px. For CIFAR pass ``in_chans=3`` and
``num_classes=10`` or ``100``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import SelectAdaptivePool2d, get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ..layers import BASES, KANActivation, KANConv2d
from ._common import FeatureTapsMixin, HeadFcMixin, kan_conv_args, run_stages
from ._registry import kan_cfg, model_name, register_entry_points

__all__ = ["StagedClassifier", "ClassifierHeadKAN", "KanSimple", "SIMPLE_ARCHS", "MODEL_ARGS", "PLAIN"]

PLAIN = "conv"  # the "basis" name of the plain-convolution twins


class ClassifierHeadKAN(nn.Module):
    """pool -> optional learnable activation -> dropout -> linear (``fc``), with timm's reset()."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0,
                 act: Optional[Dict[str, Any]] = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_features = in_features
        # No pooling ('') leaves the feature map as it is (timm's convention after pruning).
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.act = KANActivation(in_features, **act, **dd) if act is not None else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None, device: Any = None, dtype: Any = None) -> None:
        if pool_type is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        dd = dict(device=device, dtype=dtype)
        self.fc = nn.Linear(self.in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.act(self.global_pool(x)))
        return x if pre_logits else self.fc(x)


class StagedClassifier(FeatureTapsMixin, HeadFcMixin, nn.Module):
    """timm's classifier contract over ``self.stages`` (an nn.Sequential of stages) and ``self.head``.

    Subclasses build the stages, then call :meth:`_finish` with the stage widths and reductions.
    """

    stem_pattern = r"^stages\.0"

    def _finish(self, widths: Sequence[int], reductions: Sequence[int], num_classes: int, global_pool: str,
                drop_rate: float, head_act: Optional[Dict[str, Any]], dd: Dict[str, Any]) -> None:
        self.num_classes, self.drop_rate, self.grad_checkpointing = num_classes, drop_rate, False
        self.feature_info = [dict(num_chs=w, reduction=r, module=f"stages.{i}")
                             for i, (w, r) in enumerate(zip(widths, reductions))]
        self.num_features = self.head_hidden_size = widths[-1]
        self.head = ClassifierHeadKAN(widths[-1], num_classes, global_pool, drop_rate, head_act, **dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=self.stem_pattern, blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _num_taps(self) -> int:
        return len(self.stages)  # after pruning, the indices refer to the stages kept

    def _forward_taps(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        return run_stages(stages, x, take_indices, self.grad_checkpointing)

    def _prune_taps(self, max_index: int) -> None:
        self.stages = self.stages[: max_index + 1]

    def _prune_head(self, max_index: int, prune_head: bool) -> None:
        if max_index < len(self.feature_info) - 1 or prune_head:
            # The features now end at an earlier stage: a head sized for the last one must go.
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = ClassifierHeadKAN(self.num_features, 0, "", self.drop_rate, None,
                                          **get_device_dtype(self.stages))
            self.num_classes = 0


class ConvBnAct(nn.Sequential):
    """The plain twin of a KAN conv: conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, **dd: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.ReLU(inplace=True)


# arch -> stages, each a tuple of (width, stride) layers.
SIMPLE_ARCHS: Dict[str, Tuple[Tuple[Tuple[int, int], ...], ...]] = {
    "simple4": (((32, 1),), ((64, 2),), ((128, 2), (256, 1))),
    "simple8": (((16, 1),), ((32, 2),), ((64, 2), (128, 1)), ((256, 2), (256, 1), (512, 1), (512, 1))),
}


class KanSimple(StagedClassifier):
    """The seeds' simple conv nets (see the module docstring).

    Args:
        stages: per stage, (width, stride) of each 3x3 layer.
        basis: a name in kan_zoo.layers.BASES, or "conv" for plain conv -> BN -> ReLU layers.
        degree, norm_layer, basis_options: the KAN layers' settings.
        conv_drop_rate: dropout before every layer but the first.
        drop_rate: dropout before the linear classifier.
    """

    def __init__(
        self,
        stages: Sequence[Sequence[Tuple[int, int]]] = SIMPLE_ARCHS["simple4"],
        basis: str = "gram",
        num_classes: int = 10,
        in_chans: int = 1,
        global_pool: str = "avg",
        drop_rate: float = 0.5,
        conv_drop_rate: float = 0.25,
        degree: int = 3,
        norm_layer: Any = "batch",
        basis_options: Optional[Dict[str, Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if basis != PLAIN and basis not in BASES:
            raise ValueError(f"basis must be {PLAIN!r} or one of {sorted(BASES)}, got {basis!r}")
        dd = dict(device=device, dtype=dtype)
        self.in_chans, self.basis_name = in_chans, basis
        channels, reduction, first = in_chans, 1, True
        built, widths, reductions = [], [], []
        for stage in stages:
            layers: List[nn.Module] = []
            for width, stride in stage:
                if not first and conv_drop_rate > 0:
                    layers.append(nn.Dropout(conv_drop_rate))
                if basis == PLAIN:
                    layers.append(ConvBnAct(channels, width, 3, stride, **dd))
                else:
                    layers.append(KANConv2d(channels, width, 3, stride=stride, padding=1,
                                            **kan_conv_args(basis, degree, norm_layer, basis_options, **dd)))
                channels, reduction, first = width, reduction * stride, False
            built.append(nn.Sequential(*layers))
            widths.append(channels)
            reductions.append(reduction)
        self.stages = nn.Sequential(*built)
        self._finish(widths, reductions, num_classes, global_pool, drop_rate, None, dd)


# --- registry -----------------------------------------------------------------------------------

MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    model_name(arch, basis): dict(stages=SIMPLE_ARCHS[arch], basis=basis)
    for arch in SIMPLE_ARCHS for basis in (PLAIN, *BASES)
}


def _cfg(name: str) -> Dict[str, Any]:
    arch = name.split("_")[1]
    reduction = 4 if arch == "simple4" else 8
    first = "stages.0.0.conv" if name.endswith(f"_{PLAIN}") else "stages.0.0"
    # A padded stride-2 3x3 conv rounds odd sizes up (28 -> 14 -> 7 -> 4), so the map is ceil(28 / reduction).
    pool = -(-28 // reduction)
    # MNIST statistics; CIFAR users override mean/std (and in_chans / num_classes).
    return kan_cfg(num_classes=10, input_size=(1, 28, 28), pool_size=(pool, pool),
                   crop_pct=1.0, mean=(0.1307,), std=(0.3081,), first_conv=first, classifier="head.fc")


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in MODEL_ARGS})


def _create_kan_simple(variant: str, pretrained: bool = False, **kwargs: Any) -> KanSimple:
    model_args = {**MODEL_ARGS[variant], **kwargs}
    out_indices = model_args.pop("out_indices", tuple(range(len(model_args["stages"]))))
    return build_model_with_cfg(KanSimple, variant, pretrained,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **model_args)


register_entry_points(__name__, MODEL_ARGS, _create_kan_simple)
