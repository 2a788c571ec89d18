"""Shared model-family plumbing: pretrained-cfg defaults and table-generated timm entry points.

timm registers a model by decorating a function named after it. A KAN family has one entry per
(architecture, basis) pair, so the entry points are generated from the family's tables here,
each a two-line function that calls the family's single ``_create_<family>`` builder.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Iterable, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from torch import nn

from ..layers import BASES

__all__ = [
    "kan_cfg", "classifier_cfg", "segmentation_cfg", "register_entry_points", "model_name", "arch_variants",
    "PAPER_IDS", "all_bases",
]

# Kolmogorov-Arnold Networks (Liu et al. 2024) and Kolmogorov-Arnold Convolutions (Drokin 2024).
PAPER_IDS = "arXiv:2404.19756,arXiv:2407.01092"


def all_bases() -> Iterable[str]:
    return tuple(BASES)


def model_name(arch: str, basis: str) -> str:
    """kan_<arch><depth>[_<variant>]_<basis>; ``arch`` carries depth and variant, e.g. 'vgg11_slim'."""
    return f"kan_{arch}_{basis}"


def arch_variants(archs: Iterable[str]) -> Dict[str, Tuple[str, str]]:
    """Model name -> (arch, basis) for every arch with every basis: a family's registered names."""
    return {model_name(arch, basis): (arch, basis) for arch in archs for basis in BASES}


def kan_cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    """Pretrained cfg defaults of a kan_* classifier (ImageNet-1k, evaluated at 224 crop of 256)."""
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "license": "mit",
        "paper_ids": PAPER_IDS,
        **kwargs,
    }


def classifier_cfg(first_conv: str, classifier: str, paper_id: str, tiny: bool = False) -> Dict[str, Any]:
    """Cfg of an ImageNet classifier whose topology is the paper ``paper_id``'s (cited with the KAN papers).

    ``tiny``: a contract-test model, evaluated at the 32 px minimum of a stride-32 network.
    """
    common = dict(first_conv=first_conv, classifier=classifier, paper_ids=f"{PAPER_IDS},{paper_id}")
    if tiny:
        return kan_cfg(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0, **common)
    return kan_cfg(**common)


def segmentation_cfg(size: int, first_conv: str, paper_id: str) -> Dict[str, Any]:
    """Cfg of a segmentation net: ImageNet preprocessing at ``size`` px, one output class by default.

    No ``classifier`` (timm and scripts/model_table.py read its presence as "a classifier") and no
    ``pool_size`` (the output keeps the input's size).
    """
    cfg = kan_cfg(
        num_classes=1, input_size=(3, size, size), crop_pct=1.0, first_conv=first_conv,
        paper_ids=f"{PAPER_IDS},{paper_id}", classifier=None,
    )
    cfg.pop("pool_size")
    return cfg


def register_entry_points(
    module_name: str, names: Iterable[str], create: Callable[..., nn.Module]
) -> None:
    """Registers ``create(name, pretrained, **kwargs)`` in timm under each name, from ``module_name``.

    The module must already define ``default_cfgs`` (timm reads the pretrained cfgs from it).
    """
    module = sys.modules[module_name]
    for name in names:
        entry = _entry_point(name, create)
        entry.__module__ = module_name
        setattr(module, name, register_model(entry))


def _entry_point(name: str, create: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create(name, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{name}: see the family module for the architecture."
    return entry
