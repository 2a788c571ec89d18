"""Whole-checkpoint converter: torch-conv-kan VGG state dicts -> kan_zoo ``KanVgg``.

The reference VGG (``vggkagn`` / ``vggkagn_bn``) keeps its KAN layers and max pools in ``features``
at the same indices as ``KanVgg``, and its classifier is ``Sequential(Dropout, Linear)``. So each
``features.<i>.*`` group converts with the per-layer converter and ``classifier.1.*`` becomes
``head.fc.*``. The first layer is also adapted to the model's ``in_chans``, function block by
function block, with timm's rule (sum for one channel, else repeat and rescale).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Set, Tuple

import torch
from torch import nn

from ..errors import CheckpointMismatchError
from ..layers import BottleneckKANConvNd, KANConvNd
from ..layers.helpers import match_checkpoint_grid
from .torch_conv_kan import _CONSTRUCTOR_BUFFERS, convert_layer_state_dict

__all__ = ["convert_vgg_state_dict", "is_reference_vgg_state_dict", "adapt_input_channels", "adapt_kan_stem"]

Tensor = torch.Tensor

_LAYER_KEY = re.compile(r"^features\.(\d+)\.(.+)$")
# Names that only the reference layers use (ours are weight, basis.*, norm.*, proj_*_weight, base_weight).
_REFERENCE_NAMES = re.compile(
    r"^(poly_weights|beta_weights|arange|base_conv\.|layer_norm\.|inner_proj\.|out_proj\.|poly_conv\.|"
    r"spline_conv\.|relukan_conv\.|wavelet_conv\.|prelus\.|rbf\.|phase_low|phase_high)"
)
_REFERENCE_CLASSIFIER = "classifier.1."
_HEAD = "head.fc."


def is_reference_vgg_state_dict(state: Mapping[str, Tensor]) -> bool:
    """True for a torch-conv-kan VGG state dict, False for one already in kan_zoo's layout."""
    for key in state:
        if key.startswith(_REFERENCE_CLASSIFIER):
            return True
        found = _LAYER_KEY.match(key)
        if found and _REFERENCE_NAMES.match(found.group(2)):
            return True
    return False


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """(out, c, ...) weight -> (out, in_chans, ...): summed over c for one channel, else the c
    channels repeated up to in_chans and scaled by c / in_chans (timm's adapt_input_conv rule,
    kept here in the weight's own dtype so float64 stays exact)."""
    c = weight.shape[1]
    if in_chans == c:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // c)
    return weight.repeat(1, repeats, *(1,) * (weight.ndim - 2))[:, :in_chans] * (c / in_chans)


def adapt_kan_stem(state: Mapping[str, Tensor], layer: nn.Module, in_chans: int) -> Dict[str, Tensor]:
    """A first KAN layer's state (kan_zoo layout, keys without prefix) adapted to ``in_chans`` inputs.

    KANConv: the fused weight (out, F * c, k, k) is adapted per function block, so every basis
    function's kernel (polynomial ones included, not only the base branch) is kept. Bottleneck: the
    two tensors that see the input, the 1x1 squeeze and the base kernel. A grey image replicated to
    c channels then gives the same output as the adapted layer on the grey image.
    """
    if getattr(layer, "groups", 1) != 1:
        raise ValueError("only an ungrouped first layer can be adapted to another in_chans")
    out = dict(state)
    if isinstance(layer, BottleneckKANConvNd):
        for name in ("proj_in_weight", "base_weight"):
            if out.get(name) is not None:
                out[name] = adapt_input_channels(out[name], in_chans)
        return out
    if not isinstance(layer, KANConvNd) or not layer.basis.separable or layer.basis.normalizes_input:
        raise ValueError(
            f"cannot adapt a first layer with basis {getattr(layer.basis, 'name', '?')!r} to another in_chans: "
            f"its input-side parameters are not per-function kernels"
        )
    weight = out["weight"]
    blocks = weight.unflatten(1, (layer.num_functions, -1))  # (out, F, c, *k)
    adapted = adapt_input_channels(blocks.flatten(0, 1), in_chans)  # (out * F, in_chans, *k)
    out["weight"] = adapted.unflatten(0, blocks.shape[:2]).flatten(1, 2).contiguous()
    return out


def reference_layer_keys(layer: nn.Module) -> Optional[Set[str]]:
    """The keys torch-conv-kan saves for the Gram layer (plain or bottleneck) matching ``layer``,
    or None for other bases; lets a mismatch be reported key by key before converting."""
    if not isinstance(layer, KANConvNd) or layer.basis.name != "gram":
        return None
    groups = range(layer.groups)
    modules = ["base_conv"] + (["inner_proj", "out_proj"] if isinstance(layer, BottleneckKANConvNd) else [])
    keys = {"poly_weights", "beta_weights"} | {f"{m}.{g}.weight" for m in modules for g in groups}
    keys |= {f"layer_norm.{g}.{name}" for name in layer.norm.state_dict() for g in groups}
    return keys


def _stem_in_channels(state: Mapping[str, Tensor], layer: nn.Module) -> int:
    if isinstance(layer, BottleneckKANConvNd):
        return state["proj_in_weight"].shape[1]
    return state["weight"].shape[1] // layer.num_functions


def convert_vgg_state_dict(
    state: Mapping[str, Tensor], model: nn.Module, source: str = "the checkpoint"
) -> Dict[str, Tensor]:
    """A torch-conv-kan VGG (or kan_zoo KanVgg) state dict -> ``model``'s keys and shapes.

    ``model`` is the KanVgg being loaded. The first layer is adapted to ``model.in_chans``. Keys and
    shapes are checked against the model (the classifier only when the model keeps the checkpoint's
    number of classes, since timm drops it otherwise); a mismatch raises
    ``kan_zoo.hub.CheckpointMismatchError`` naming ``source`` and every missing / unexpected key.
    """
    features = model.features
    reference = is_reference_vgg_state_dict(state)
    out: Dict[str, Tensor] = {}
    missing: List[str] = []
    unexpected: List[str] = []
    cause = None
    reported: List[str] = []  # layer prefixes whose mismatch is already listed

    per_layer: Dict[int, Dict[str, Tensor]] = defaultdict(dict)
    for key, value in state.items():
        found = _LAYER_KEY.match(key)
        if found:
            per_layer[int(found.group(1))][found.group(2)] = value
        elif reference and key.startswith(_REFERENCE_CLASSIFIER):
            out[_HEAD + key[len(_REFERENCE_CLASSIFIER):]] = value
        else:
            out[key] = value  # ours (head.fc.*) pass through; anything else is reported below

    if not reference:
        # Grid growth (kan_zoo.grid): our checkpoint may have other grid sizes than the architecture's
        # defaults. Resize those layers now, as their load_state_dict would, so that keys and shapes
        # below are compared at the saved sizes; a layer that does not fit otherwise stays as it is.
        for index, layer_state in per_layer.items():
            if index < len(features) and isinstance(features[index], KANConvNd):
                match_checkpoint_grid(features[index], layer_state, "")
    expected = model.state_dict()

    for index, layer_state in sorted(per_layer.items()):
        prefix = f"features.{index}."
        layer = features[index] if index < len(features) else None
        if not isinstance(layer, KANConvNd):
            unexpected += [prefix + k for k in layer_state]
            continue
        wanted = reference_layer_keys(layer) if reference else None
        if wanted is not None and wanted != layer_state.keys():
            missing += sorted(prefix + k for k in wanted - layer_state.keys())
            unexpected += sorted(prefix + k for k in layer_state.keys() - wanted)
            reported.append(prefix)  # in reference names; its kan_zoo names are not listed again
            continue
        try:
            converted = convert_layer_state_dict(layer_state) if reference else dict(layer_state)
            if index == 0 and _stem_in_channels(converted, layer) != model.in_chans:
                converted = adapt_kan_stem(converted, layer, model.in_chans)
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
            # Keys the converter cannot make sense of: report the layer's keys on both sides.
            unexpected += [prefix + k for k in layer_state]
            missing += [k for k in expected if k.startswith(prefix)]
            reported.append(prefix)
            cause = cause or e
            continue
        own = layer.state_dict()
        # Never saved by the reference (B-spline knots, FastKAN width, ReLU-KAN scale), nor by kan_zoo
        # before the width and scale became buffers: the layer's constructor values, as loading would.
        for key in _CONSTRUCTOR_BUFFERS:
            if key in own and key not in converted:
                converted[key] = own[key].clone()
        out.update({prefix + k: v for k, v in converted.items()})

    keep_head = getattr(model, "num_classes", None) == (getattr(model, "pretrained_cfg", None) or {}).get(
        "num_classes", getattr(model, "num_classes", None)
    )
    compared = {
        k for k in expected
        if (keep_head or not k.startswith(_HEAD)) and not any(k.startswith(p) for p in reported)
    }
    missing += sorted(k for k in compared - out.keys() if k not in missing)
    unexpected += sorted(k for k in out.keys() - expected.keys() if keep_head or not k.startswith(_HEAD))
    shapes: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = [
        (k, tuple(out[k].shape), tuple(expected[k].shape))
        for k in sorted(compared & out.keys())
        if out[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        raise CheckpointMismatchError(source, missing, unexpected, shapes, model_name=arch) from cause
    return out
