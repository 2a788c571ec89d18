"""Key converter from the torch-conv-kan layout (IvanDrokin/torch-conv-kan, MIT) to kan_zoo's.

The reference keeps one module per group (``base_conv.<g>``, ``layer_norm.<g>``, ...) and lays
basis channels out degree-major (gram, jacobi) or channel-major (the others). kan_zoo has one
fused, grouped weight with the base branch as function 0 and every basis function-major, so
conversion concatenates groups, reorders channel-major kernels, and folds the base kernel in.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional

import torch

__all__ = ["convert_layer_state_dict", "convert_block_state_dict", "check_state_dict_matches",
           "detect_reference_family", "REFERENCE_FAMILIES"]

Tensor = torch.Tensor

# Reference class family -> kan_zoo basis name (the bottleneck family maps to gram bottleneck).
REFERENCE_FAMILIES = {
    "kagn": "gram",
    "bottleneck_kagn": "gram",
    "kacn": "chebyshev",
    "kajn": "jacobi",
    "kan": "bspline",
    "fastkan": "rbf",
    "relukan": "relu",
    "wavkan": "wavelet",
}


# kan_zoo buffers the reference computes from its constructor arguments instead of saving.
_CONSTRUCTOR_BUFFERS = ("basis.grid", "basis.inv_width", "basis.scale")


def detect_reference_family(keys) -> str:
    """Which torch-conv-kan layer class a set of (prefix-free) state-dict keys comes from."""
    keys = set(keys)
    if "poly_conv.weight" in keys and "beta_weights" in keys:
        # KAGNConvNDLayerV2 (kagn_conv_v2.py): with groups > 1 its degree-major basis feeds each group
        # channels of other inputs and degrees, which no KAN conv computes (docs/moe_attention.md).
        raise ValueError("torch-conv-kan's KAGNConvNDLayerV2 is not supported: its grouped layout is not "
                         "a KAN conv")
    if "inner_proj.0.weight" in keys:
        return "bottleneck_kagn"
    if "beta_weights" in keys:
        return "kagn"
    if "poly_conv.0.weight" in keys:
        return "kacn"
    if "poly_weights" in keys:
        return "kajn"
    if "prelus.0.weight" in keys:
        return "kan"
    if "rbf.grid" in keys:
        return "fastkan"
    if "relukan_conv.0.weight" in keys:
        return "relukan"
    if "wavelet_conv.0.scale" in keys:
        return "wavkan"
    raise ValueError(f"not a torch-conv-kan layer state dict; keys: {sorted(keys)}")


def _per_group(state: Mapping[str, Tensor], module: str, name: str) -> List[Tensor]:
    pattern = re.compile(rf"^{re.escape(module)}\.(\d+)\.{re.escape(name)}$")
    found = sorted((int(m.group(1)), v) for k, v in state.items() if (m := pattern.match(k)))
    if [g for g, _ in found] != list(range(len(found))):
        raise ValueError(f"groups of {module}.<g>.{name} are not numbered 0..G-1")
    return [v for _, v in found]


def _cat_groups(state: Mapping[str, Tensor], module: str, name: str) -> Optional[Tensor]:
    parts = _per_group(state, module, name)
    return torch.cat(parts, 0) if parts else None


def _function_major(kernels: Tensor, in_per_group: int, channel_major: bool) -> Tensor:
    """(o, c*K, *k) in the reference layout -> (o, K, c, *k) function-major."""
    if channel_major:
        return kernels.unflatten(1, (in_per_group, -1)).transpose(1, 2)
    return kernels.unflatten(1, (-1, in_per_group))


def _fused_weight(base: Optional[Tensor], kernels: Tensor, in_per_group: int, channel_major: bool) -> Tensor:
    functions = _function_major(kernels, in_per_group, channel_major)
    if base is not None:
        functions = torch.cat([base.unsqueeze(1), functions], 1)
    return functions.flatten(1, 2).contiguous()


def _norm(state: Mapping[str, Tensor], out: Dict[str, Tensor]) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = _cat_groups(state, "layer_norm", name)
        if value is not None:
            out[f"norm.{name}"] = value
    counts = _per_group(state, "layer_norm", "num_batches_tracked")
    if counts:
        out["norm.num_batches_tracked"] = counts[0].clone()


def convert_layer_state_dict(state: Mapping[str, Tensor], target: Optional[torch.nn.Module] = None) -> Dict[str, Tensor]:
    """One reference layer's state dict (keys without a prefix) -> the matching kan_zoo layer's.

    The family is detected from the keys; the target is KANConvNd (or BottleneckKANConvNd for
    BottleNeckKAGN) with the basis in REFERENCE_FAMILIES and the same channels and groups.
    With ``target`` (that kan_zoo layer), buffers the reference derives from its constructor
    instead of saving (the B-spline knots, the FastKAN width ``basis.inv_width``, the ReLU-KAN
    bell scale ``basis.scale``) are taken from it, and the result is checked key for key and shape
    for shape against it, so a mismatch fails here with the names of the keys. Without ``target``
    the width and scale are left out; loading then keeps the layer's constructor values.
    """
    out = _convert(state)
    if target is None:
        return out
    expected = target.state_dict()
    for key in expected.keys() - out.keys():
        if key in _CONSTRUCTOR_BUFFERS:
            out[key] = expected[key].clone()
    check_state_dict_matches(out, expected, what=type(target).__name__)
    return out


def convert_block_state_dict(state: Mapping[str, Tensor], target: torch.nn.Module) -> Dict[str, Tensor]:
    """A reference block's state dict (a module built of torch-conv-kan layers, such as its MoE or
    self-attention layers) -> the state dict of ``target``, the matching kan_zoo block.

    Every KAN conv inside ``target`` converts the reference keys under its reference path with
    :func:`convert_layer_state_dict`; the other keys keep their names except for the module paths in
    ``target.reference_renames`` ({reference path: kan_zoo path}), and those in
    ``target.reference_dropped`` are left out. The result is checked against ``target`` key for key.
    """
    from ..layers import KANConvNd

    renames: Mapping[str, str] = getattr(target, "reference_renames", {})
    dropped = set(getattr(target, "reference_dropped", ()))

    def rename(path: str, table: Mapping[str, str]) -> str:
        for old, new in table.items():
            if path == old or path.startswith(old + "."):
                return new + path[len(old):]
        return path

    out: Dict[str, Tensor] = {}
    converted = set()
    for path, module in target.named_modules():
        if not path or not isinstance(module, KANConvNd):
            continue
        prefix = rename(path, {new: old for old, new in renames.items()}) + "."
        layer_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        converted.update(prefix + k for k in layer_state)
        for key, value in convert_layer_state_dict(layer_state, target=module).items():
            out[f"{path}.{key}"] = value
    for key, value in state.items():
        if key not in converted and key not in dropped:
            out[rename(key, renames)] = value
    check_state_dict_matches(out, target.state_dict(), what=type(target).__name__)
    return out


def check_state_dict_matches(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str) -> None:
    """Raises a ValueError naming missing, unexpected and wrongly shaped keys."""
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & state.keys())
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"converted checkpoint does not fit {what}: missing keys {missing}, unexpected keys {unexpected}, "
            f"shape mismatches {shapes}"
        )


def _convert(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    family = detect_reference_family(state.keys())
    out: Dict[str, Tensor] = {}
    bases = _per_group(state, "base_conv", "weight")
    c = bases[0].shape[1] if bases else None

    if family == "bottleneck_kagn":
        poly = state["poly_weights"]  # (G, m, m*(D+1), k): already function-major over the inner width
        out["weight"] = poly.flatten(0, 1).contiguous()
        out["proj_in_weight"] = _cat_groups(state, "inner_proj", "weight")
        out["proj_out_weight"] = _cat_groups(state, "out_proj", "weight")
        out["base_weight"] = torch.cat(bases, 0)
        out["basis.beta_weights"] = state["beta_weights"]
    elif family in ("kagn", "kajn"):
        poly = state["poly_weights"]  # (G, o, c*(D+1), k), degree-major
        out["weight"] = torch.cat([_fused_weight(b, p, c, False) for b, p in zip(bases, poly)], 0)
        if family == "kagn":
            out["basis.beta_weights"] = state["beta_weights"]
    elif family == "kacn":
        kernels = _per_group(state, "poly_conv", "weight")
        degree_plus_one = state["arange"].numel()
        c = kernels[0].shape[1] // degree_plus_one
        out["weight"] = torch.cat([_fused_weight(None, k, c, True) for k in kernels], 0)
    elif family in ("kan", "fastkan", "relukan"):
        module = {"kan": "spline_conv", "fastkan": "spline_conv", "relukan": "relukan_conv"}[family]
        kernels = _per_group(state, module, "weight")
        out["weight"] = torch.cat([_fused_weight(b, k, c, True) for b, k in zip(bases, kernels)], 0)
        if family == "kan":
            out["act.weight"] = torch.cat(_per_group(state, "prelus", "weight"), 0)
        elif family == "fastkan":
            out["basis.grid"] = state["rbf.grid"]
        else:
            # One (c, g+k) pair shared by all groups in the reference; one row per input channel here.
            groups = len(bases)
            for name in ("phase_low", "phase_high"):
                phase = state[name].reshape(state[name].shape[1], state[name].shape[2])
                out[f"basis.{name}"] = phase.repeat(groups, 1)
    elif family == "wavkan":
        out["weight"] = torch.cat(bases, 0)
        wav = {k[len("wavelet_conv.") :]: v for k, v in state.items() if k.startswith("wavelet_conv.")}
        groups = len(bases)
        scale, translation, weight, mix = [], [], [], []
        for g in range(groups):
            scale.append(wav[f"{g}.scale"].flatten(0, 1).reshape(-1, c))
            translation.append(wav[f"{g}.translation"].flatten(0, 1).reshape(-1, c))
            if f"{g}.wavelet_weights.weight" in wav:  # wav_version 'fast'
                weight.append(wav[f"{g}.wavelet_weights.weight"])
            else:  # 'base': one (1, c, k) conv per output; stacked they are the 'fast' weight
                per_output = _per_group(wav, f"{g}.wavelet_weights", "weight")
                weight.append(torch.cat(per_output, 0))
            mix.append(wav[f"{g}.wavelet_out.weight"])
        out["basis.scale"] = torch.cat(scale, 0)
        out["basis.translation"] = torch.cat(translation, 0)
        out["basis.wavelet_weight"] = torch.cat(weight, 0)
        out["basis.mix_weight"] = torch.cat(mix, 0)
    # FastKAN's layer_norm runs over the input channels; kan_zoo's ``norm`` does too for rbf.
    _norm(state, out)
    return out
