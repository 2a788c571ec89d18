"""The one loader for ../shared/fixtures/torch_conv_kan (reference outputs of torch-conv-kan, MIT).

Set KAN_ZOO_FIXTURES to point elsewhere; by default the fixtures sit beside the repository.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

FIXTURES = Path(
    os.environ.get("KAN_ZOO_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "torch_conv_kan")
)
LAYER_CASES = sorted(p.stem for p in (FIXTURES / "layers").glob("*.safetensors"))
MODEL_CASES = ("vgg_kagn11_v2", "vgg_kagn11_v4", "vgg_kagn_bn11_v4")
# Published pretrained tag -> the model fixture holding its checkpoint's layout.
PRETRAINED_CASES = {
    "kan_vgg11_gram.in1k": "vgg_kagn11_v4",
    "kan_vgg11_bottleneck_gram.in1k": "vgg_kagn_bn11_v4",
    "kan_vgg11_slim_gram.in1k": "vgg_kagn11_v2",
}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, the fixture README's float32/float64 tolerance measure."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def load_layer_case(name: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(metadata, tensors without the state, reference state dict) of one layer fixture."""
    return _load_case(FIXTURES / "layers" / f"{name}.safetensors")


def load_extras_case(name: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """The same for one fixture of extras/ (MoE, attention, focal modulation, PEFT)."""
    return _load_case(FIXTURES / "extras" / f"{name}.safetensors")


def _load_case(path: Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["fixture"])
    tensors = load_file(str(path))
    state = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
    rest = {k: v for k, v in tensors.items() if not k.startswith("state.")}
    return meta, rest, state


def load_model_case(name: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(Hub config.json, forward tensors, reference-layout state dict filled by fill.py) of a model fixture."""
    config = json.loads((FIXTURES / "models" / f"{name}.config.json").read_text())
    forward = load_file(str(FIXTURES / "models" / f"{name}.forward.safetensors"))
    fill = _fill_module()
    state = fill.deterministic_state_dict(fill.load_key_specs(FIXTURES / "models" / f"{name}.keys.txt"))
    return config, forward, state


def checkpoint_repo_files(case: str, state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """The files of a model fixture's published repo, ``state`` as its ``model.safetensors``."""
    return {"model.safetensors": save(state), "config.json": FIXTURES / "models" / f"{case}.config.json"}


@functools.lru_cache(maxsize=1)
def _fill_module():
    spec = importlib.util.spec_from_file_location("torch_conv_kan_fill", FIXTURES / "fill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Reference class -> (kan_zoo basis, bottleneck?, how reference kwargs map to kan_zoo's).
_REFERENCE_CLASSES = {
    "KAGN": ("gram", False), "BottleNeckKAGN": ("gram", True), "KACN": ("chebyshev", False),
    "KAJN": ("jacobi", False), "KAN": ("bspline", False), "FastKAN": ("rbf", False),
    "ReLUKAN": ("relu", False), "WavKAN": ("wavelet", False),
}
_OPTION_NAMES = {"spline_order": "degree", "g": "grid_size", "k": "degree", "train_ab": "train_phases"}
_IGNORED = {"input_dim", "output_dim", "kernel_size", "stride", "padding", "dilation", "groups", "dropout",
            "norm_layer", "affine", "base_activation", "wav_version"}


def build_layer_for_case(meta: Dict[str, Any]) -> torch.nn.Module:
    """kan_zoo's equivalent of the reference layer a fixture was made with."""
    from kan_zoo import layers

    cls_name = meta["reference_class"].rsplit(".", 1)[-1]
    family, ndim = cls_name.replace("Layer", "").rsplit("Conv", 1)
    basis, bottleneck = _REFERENCE_CLASSES[family]
    kw = meta["kwargs"]
    norm = kw.get("norm_layer", "torch.nn.InstanceNorm2d").rsplit(".", 1)[-1]
    norm_layer = "batch" if norm.startswith("BatchNorm") else ("instance_affine" if kw.get("affine") else "instance")
    options = {_OPTION_NAMES.get(k, k): v for k, v in kw.items() if k not in _IGNORED}
    if "grid_range" in options:
        options["grid_range"] = tuple(options["grid_range"])
    cls = getattr(layers, f"{'BottleneckKANConv' if bottleneck else 'KANConv'}{ndim.lower()}")
    return cls(
        kw["input_dim"], kw["output_dim"], kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"],
        kw["groups"], basis=basis, norm_layer=norm_layer, **options,
    )
