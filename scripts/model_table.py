#!/usr/bin/env python
"""Prints docs/models.md's markdown table of parameters and GMACs of every kan_* classification model.

    python scripts/model_table.py                 # architectures x bases, "params / GMACs" per cell
    python scripts/model_table.py --long          # one row per model
    python scripts/model_table.py --filter 'kan_resnet*' --img-size 256

Models are discovered with ``timm.list_models('kan_*')`` (the tiny ``kan_test_*`` contract-test models
and anything without a classifier in its pretrained cfg are left out), so a new family appears here
without edits.

How the numbers are made, and why it costs seconds rather than hours on a laptop CPU: see
``kan_zoo.complexity.measure`` (meta-device build; params: the sum of its parameters' sizes; MACs:
one meta forward of 1 x C x S x S, S = 224 by default, under ``FlopCounterMode``: convolutions and
matrix products only, so the wavelet basis's elementwise evaluation is not in its GMACs figure).
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import Dict, List, Optional, Tuple

import timm

import kan_zoo
from kan_zoo import complexity
from kan_zoo.layers import BASES


def classification_models(pattern: str = "kan_*") -> List[str]:
    """The registered kan_* classifiers matching ``pattern``, tiny test models excluded."""
    names = []
    for name in timm.list_models("kan_*"):
        if not fnmatch.fnmatch(name, pattern) or name.startswith("kan_test_"):
            continue
        if timm.models.get_pretrained_cfg(name).classifier:  # segmentation nets have no classifier
            names.append(name)
    return names


def split_name(name: str) -> Tuple[str, str]:
    """kan_<arch>_<basis> -> (arch, basis); arch may itself contain underscores (vgg11_slim)."""
    arch, _, basis = name[len("kan_"):].rpartition("_")
    if basis not in BASES:
        return name[len("kan_"):], ""
    return arch, basis


def measure(name: str, img_size: int = 224) -> Tuple[int, Optional[float]]:
    """(parameter count, GMACs at img_size px or None where the meta forward is not supported)."""
    # The counter lives in the package so the model cards (kan_zoo.hub) print the same numbers.
    return complexity.measure(name, img_size)


def _fmt(params: int, gmacs: Optional[float]) -> str:
    return f"{params / 1e6:.1f}M / {'n/a' if gmacs is None else f'{gmacs:.2f}'}"


def pivot_table(results: Dict[str, Tuple[int, Optional[float]]]) -> str:
    """Rows: architectures; columns: bases; cells: 'params / GMACs'."""
    cells: Dict[str, Dict[str, str]] = {}
    for name, (params, gmacs) in results.items():
        arch, basis = split_name(name)
        cells.setdefault(arch, {})[basis or "-"] = _fmt(params, gmacs)
    bases = [b for b in BASES if any(b in row for row in cells.values())]
    if any("-" in row for row in cells.values()):
        bases.append("-")
    lines = ["| architecture | " + " | ".join(bases) + " |", "|---" * (len(bases) + 1) + "|"]
    for arch, row in cells.items():
        lines.append(f"| {arch} | " + " | ".join(row.get(b, "") for b in bases) + " |")
    return "\n".join(lines)


def long_table(results: Dict[str, Tuple[int, Optional[float]]]) -> str:
    lines = ["| model | params (M) | GMACs |", "|---|---:|---:|"]
    for name, (params, gmacs) in results.items():
        lines.append(f"| {name} | {params / 1e6:.2f} | {'n/a' if gmacs is None else f'{gmacs:.2f}'} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filter", default="kan_*", help="fnmatch pattern over model names")
    parser.add_argument("--img-size", type=int, default=224, help="input side for the MAC count")
    parser.add_argument("--long", action="store_true", help="one row per model instead of arch x basis")
    args = parser.parse_args(argv)

    names = classification_models(args.filter)
    if not names:
        print(f"no kan_* classification model matches {args.filter!r}", file=sys.stderr)
        return 1
    results = {name: measure(name, args.img_size) for name in names}
    print(long_table(results) if args.long else pivot_table(results))
    print(
        f"\nCells: parameters (millions) / GMACs of one {args.img_size}x{args.img_size} image, convolutions and "
        f"matrix products only (FlopCounterMode on the meta device; kan_zoo {kan_zoo.__version__}). The "
        "wavelet basis's elementwise wavelet evaluation, (C_out/groups) x its input per layer, is not counted."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
