"""Hub-ready export of the trained model.

Goes through kan_zoo.hub (the project's publishing code) when it is available; otherwise writes
the same layout itself with timm's own serializer: model.safetensors, a timm config.json that
``timm.create_model('local-dir:<folder>', pretrained=True)`` loads, and a README.md model card.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

__all__ = ["export_model", "model_card", "export_to_folder_fallback"]


def _filter_kwargs(fn: Any, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def model_card(model_name: str, metrics: Dict[str, Any], dataset: str, command: Sequence[str]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    return f"""---
library_name: timm
tags: [image-classification, timm, kan_zoo]
---
# {model_name}

Trained with kan_zoo's `train_imagenet.py` on `{dataset}`.

## Measured metrics (validation split)

| metric | value |
|---|---|
{rows}

## Use

```python
import timm, kan_zoo  # kan_zoo registers the kan_* architectures
model = timm.create_model("local-dir:<this folder>", pretrained=True).eval()
```

## Training command

```
{" ".join(command)}
```
"""


def export_to_folder_fallback(model: torch.nn.Module, folder: Path, *, metrics: Optional[Dict[str, Any]] = None,
                              model_card: Optional[str] = None,
                              pretrained_cfg_overrides: Optional[Dict[str, Any]] = None) -> Path:
    """Same layout as kan_zoo.hub.export_to_folder, via timm's save_for_hf (used if kan_zoo.hub is absent)."""
    from timm.models import save_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    overrides = dict(pretrained_cfg_overrides or {})
    model_config: Dict[str, Any] = {"pretrained_cfg": overrides}
    if overrides.get("label_names"):
        model_config["label_names"] = list(overrides.pop("label_names"))
    save_for_hf(model, str(folder), model_config=model_config, safe_serialization=True,
                data_config={k: overrides[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation")
                             if k in overrides})
    (folder / "README.md").write_text(model_card or _card_for(model, metrics or {}))
    return folder


def _card_for(model: torch.nn.Module, metrics: Dict[str, Any]) -> str:
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    return model_card(arch, metrics, str(metrics.get("dataset", "")), [])


def cfg_overrides(data_config: Dict[str, Any], label_names: Optional[Sequence[str]]) -> Dict[str, Any]:
    """The training preprocessing (and class names) for the exported config.json's pretrained_cfg."""
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    out: Dict[str, Any] = {k: data_config[k] for k in keys if data_config.get(k) is not None}
    if label_names:
        out["label_names"] = list(label_names)
    return out


def export_model(model: torch.nn.Module, folder: Path, *, metrics: Dict[str, Any], data_config: Dict[str, Any],
                 label_names: Optional[Sequence[str]], card: Optional[str] = None) -> Path:
    """Exports through kan_zoo.hub when present (its card lists ``metrics``), else through timm."""
    try:
        from kan_zoo.hub import export_to_folder
    except ImportError:
        export_to_folder = export_to_folder_fallback
    kwargs = dict(metrics=metrics, model_card=card, pretrained_cfg_overrides=cfg_overrides(data_config, label_names))
    return Path(export_to_folder(model, folder, **_filter_kwargs(export_to_folder, kwargs)))
