"""Hub-ready export of the trained model.

Goes through kan_zoo.hub (the project's publishing code) when it is available; otherwise writes
the same layout itself with timm's own serializer: model.safetensors, a timm config.json that
``timm.create_model('local-dir:<folder>', pretrained=True)`` loads, and a README.md model card.
"""
from __future__ import annotations

import inspect
import json
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
                              model_card: Optional[str] = None, label_names: Optional[Sequence[str]] = None,
                              data_config: Optional[Dict[str, Any]] = None) -> Path:
    from timm.models import save_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_config: Dict[str, Any] = {}
    if label_names:
        model_config["label_names"] = list(label_names)
    save_for_hf(model, str(folder), model_config=model_config, safe_serialization=True, data_config=data_config)
    if metrics:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (folder / "README.md").write_text(model_card or "")
    return folder


def export_model(model: torch.nn.Module, folder: Path, *, metrics: Dict[str, Any], card: str,
                 data_config: Dict[str, Any], label_names: Optional[Sequence[str]]) -> Path:
    """Records the training preprocessing in model.pretrained_cfg, then exports."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update({k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
                if k in data_config})
    cfg["num_classes"] = model.num_classes
    if label_names:
        cfg["label_names"] = list(label_names)
    model.pretrained_cfg = cfg  # exporters read preprocessing from here
    kwargs = dict(metrics=metrics, model_card=card, label_names=label_names, data_config=data_config)
    try:
        from kan_zoo.hub import export_to_folder
    except ImportError:
        export_to_folder = export_to_folder_fallback
    return Path(export_to_folder(model, folder, **_filter_kwargs(export_to_folder, kwargs)))
