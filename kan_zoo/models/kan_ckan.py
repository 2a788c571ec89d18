"""Learnable-activation convolutional KANs: ordinary convs followed by per-channel KAN functions.

The seeds' other design keeps every convolution plain and moves the Kolmogorov-Arnold part into a
learnable activation (``kan_zoo.layers.KANActivation``): one univariate function per channel,
on any basis. Block: ``conv (no bias) -> KANActivation -> BatchNorm``.

    kan_ckan_<basis>             six blocks, kernels 7/5/3/3/3/3 (the first strided 2), widths
                                 64-128-256-256-512-512, a 2x2 max pool between stages
    kan_ckan_multiscale_<basis>  the first block replaced by parallel 3x3 / 5x5 / 7x7 blocks
                                 (stride 2, 64 channels each), concatenated and fused by a 1x1 block
    kan_test_ckan_<basis>        the six-block layout with widths 8-16-16-16-32-32, for tests

Stages (``stages.i``; the head is ``head.fc``) group the blocks by width::

    [block 7x7/2] | pool, [block 5x5] | pool, [3x3, 3x3] | pool, [3x3, 3x3]   reductions 2, 4, 8, 16

Head: global average pool -> KANActivation over the pooled features -> dropout -> linear.

The activation's basis is the model's basis with its defaults (B-splines of order 3 on 5 cells,
rbf 8 centres...): grids are fixed to [-1, 1] (rbf [-2, 2]) while the conv outputs they see are
not normalised, so ``kan_zoo.grid.update_grids`` is worth running on a batch before training.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from ..layers import BASES, KANActivation
from ._registry import kan_cfg, model_name, register_entry_points
from .kan_simple import StagedClassifier

__all__ = ["CKANBlock", "MultiScaleBlock", "KanCKAN", "CKAN_WIDTHS", "MODEL_ARGS"]

CKAN_KERNELS = (7, 5, 3, 3, 3, 3)
CKAN_STAGES = ((0,), (1,), (2, 3), (4, 5))  # block indices of each stage; a max pool before stages 1..3
CKAN_WIDTHS = {"ckan": (64, 128, 256, 256, 512, 512), "test": (8, 16, 16, 16, 32, 32)}


class CKANBlock(nn.Module):
    """conv (no bias) -> learnable per-channel activation -> BatchNorm."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 act: Optional[Dict[str, Any]] = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False, **dd)
        self.act = KANActivation(out_chs, **(act or {}), **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(x)))


class MultiScaleBlock(nn.Module):
    """Parallel 3x3 / 5x5 / 7x7 blocks on the same input, concatenated, fused by a 1x1 block."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2, kernels: Sequence[int] = (3, 5, 7),
                 act: Optional[Dict[str, Any]] = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.branches = nn.ModuleList(CKANBlock(in_chs, out_chs, k, stride, act, **dd) for k in kernels)
        self.fuse = CKANBlock(out_chs * len(kernels), out_chs, 1, 1, act, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))


class KanCKAN(StagedClassifier):
    """Learnable-activation CKAN (see the module docstring).

    Args:
        widths: output channels of the six blocks.
        basis, degree, basis_options: the KANActivations' basis (kan_zoo.layers.BASES).
        multiscale: replace the first block by :class:`MultiScaleBlock`.
        drop_rate: dropout in the head, between its learnable activation and the linear layer.
    """

    stem_pattern = r"^stages\.0\."

    def __init__(
        self,
        widths: Sequence[int] = CKAN_WIDTHS["ckan"],
        basis: str = "bspline",
        multiscale: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.25,
        degree: int = 3,
        basis_options: Optional[Dict[str, Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if len(widths) != len(CKAN_KERNELS):
            raise ValueError(f"widths needs {len(CKAN_KERNELS)} entries, got {tuple(widths)}")
        dd = dict(device=device, dtype=dtype)
        act = dict(basis=basis, degree=degree, **(basis_options or {}))
        self.in_chans, self.basis_name = in_chans, basis
        stages: List[nn.Module] = []
        channels, reductions = in_chans, []
        for s, block_ids in enumerate(CKAN_STAGES):
            layers: List[nn.Module] = [nn.MaxPool2d(2, 2)] if s > 0 else []
            for i in block_ids:
                if i == 0 and multiscale:
                    layers.append(MultiScaleBlock(channels, widths[0], 2, act=act, **dd))
                else:
                    layers.append(CKANBlock(channels, widths[i], CKAN_KERNELS[i], 2 if i == 0 else 1, act, **dd))
                channels = widths[i]
            stages.append(nn.Sequential(*layers))
            reductions.append(2 ** (s + 1))
        self.stages = nn.Sequential(*stages)
        stage_widths = [widths[ids[-1]] for ids in CKAN_STAGES]
        self._finish(stage_widths, reductions, num_classes, global_pool, drop_rate, act, dd)


# --- registry -----------------------------------------------------------------------------------

MODEL_ARGS: Dict[str, Dict[str, Any]] = {}
for _basis in BASES:
    MODEL_ARGS[model_name("ckan", _basis)] = dict(widths=CKAN_WIDTHS["ckan"], basis=_basis)
    MODEL_ARGS[model_name("ckan_multiscale", _basis)] = dict(widths=CKAN_WIDTHS["ckan"], basis=_basis, multiscale=True)
    MODEL_ARGS[model_name("test_ckan", _basis)] = dict(widths=CKAN_WIDTHS["test"], basis=_basis, drop_rate=0.0)


def _cfg(name: str) -> Dict[str, Any]:
    first = "stages.0.0.branches.0.conv" if "multiscale" in name else "stages.0.0.conv"
    if name.startswith("kan_test_"):
        return kan_cfg(input_size=(3, 32, 32), pool_size=(2, 2), crop_pct=1.0, first_conv=first, classifier="head.fc")
    return kan_cfg(pool_size=(14, 14), first_conv=first, classifier="head.fc")


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in MODEL_ARGS})


def _create_kan_ckan(variant: str, pretrained: bool = False, **kwargs: Any) -> KanCKAN:
    model_args = {**MODEL_ARGS[variant], **kwargs}
    out_indices = model_args.pop("out_indices", tuple(range(len(CKAN_STAGES))))
    return build_model_with_cfg(KanCKAN, variant, pretrained,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **model_args)


register_entry_points(__name__, MODEL_ARGS, _create_kan_ckan)
