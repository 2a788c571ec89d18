"""Hub-ready export of the trained model.

Goes through kan_zoo.hub (the project's publishing code) when it is available; otherwise writes
the same layout itself with timm's own serializer: model.safetensors, a timm config.json that
``timm.create_model('local-dir:<folder>', pretrained=True)`` loads, and a README.md model card.
"""
from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import torch

__all__ = ["export_model", "model_card", "export_to_folder_fallback", "run_pretrained_cfg", "describing_run",
           "export_run"]

# Facts about the architecture, true of any weights; everything else in a timm pretrained_cfg
# (tag, hub id, licence, paper ids, test size and crop, notes) describes one published checkpoint.
_ARCHITECTURE_KEYS = ("architecture", "first_conv", "classifier", "fixed_input_size", "min_input_size")


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


def run_pretrained_cfg(model: torch.nn.Module, data_config: Dict[str, Any], licence: str) -> Dict[str, Any]:
    """The pretrained_cfg of weights trained here: the architecture's facts, the run's preprocessing
    (input size, crop, interpolation, mean/std it was trained and evaluated with) and ``licence``;
    nothing of the timm checkpoint the model name's default tag describes (its test size, licence, papers)."""
    source = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg: Dict[str, Any] = {k: source[k] for k in _ARCHITECTURE_KEYS if source.get(k) is not None}
    cfg.update(input_size=tuple(data_config["input_size"]), interpolation=data_config["interpolation"],
               mean=tuple(data_config["mean"]), std=tuple(data_config["std"]), crop_pct=data_config["crop_pct"],
               crop_mode=data_config.get("crop_mode") or "center", num_classes=model.num_classes, license=licence)
    if source.get("pool_size") and tuple(source.get("input_size", ())[1:]) == cfg["input_size"][1:]:
        cfg["pool_size"] = source["pool_size"]
    return cfg


@contextmanager
def describing_run(model: torch.nn.Module, cfg: Dict[str, Any]) -> Iterator[torch.nn.Module]:
    """``model`` with ``cfg`` as its pretrained_cfg while exporting / pushing, its own one after."""
    had = model.__dict__.get("pretrained_cfg"), model.__dict__.get("default_cfg")
    model.pretrained_cfg = model.default_cfg = cfg  # timm keeps default_cfg as an alias
    try:
        yield model
    finally:
        model.pretrained_cfg, model.default_cfg = had


def export_run(args: Any, acc: Any, model: Any, ema: Any, metrics: Dict[str, Any], data: Any,
               data_cfg: Dict[str, Any], merge_peft: bool = False) -> Dict[str, Any]:
    """Collective: the better (or chosen) weights into the export folder (and the Hub), by the main process;
    with ``merge_peft`` the PEFT adapters merged into plain KAN convs of the higher degree."""
    use_ema = ema is not None and (args.export_weights == "ema" or (
        args.export_weights == "auto" and metrics.get("val_ema/top1", -1) > metrics["val/top1"]))
    prefix = "val_ema" if use_ema else "val"
    weights = "EMA" if use_ema else "model"
    card_metrics = {f"top-1 accuracy (%), {args.val_split}": round(metrics[f"{prefix}/top1"], 3),
                    f"top-5 accuracy (%), {args.val_split}": round(metrics[f"{prefix}/top5"], 3),
                    f"{args.val_split} images": metrics["val/count"], "weights": weights,
                    "epochs": args.epochs, "dataset": args.dataset}
    if getattr(args, "teacher", None) or getattr(args, "teacher_path", None):
        card_metrics["distilled from"] = args.teacher or args.teacher_path
    folder = Path(args.export_dir or Path(args.output) / "export")
    export_metrics = {"top1": metrics[f"{prefix}/top1"], "top5": metrics[f"{prefix}/top5"],
                      "val_images": metrics["val/count"], "weights": weights.lower(), "all": metrics}
    result: Dict[str, Any] = {"metrics": metrics, "export_metrics": export_metrics, "export_dir": str(folder)}
    acc.wait_for_everyone()
    if acc.is_main_process:
        net = ema.module if use_ema else acc.unwrap_model(model)
        if merge_peft:  # training is over: the export is the plain model of the higher degree
            from kan_zoo.peft import merge

            net = merge(net)
        with describing_run(net, run_pretrained_cfg(net, data_cfg, args.license)):
            export_model(net, folder, metrics=card_metrics, data_config=data_cfg, label_names=data.label_names)
            (folder / "metrics.json").write_text(json.dumps(export_metrics, indent=1))  # exact values, for tools
            print(f"exported {weights} weights (val top-1 {export_metrics['top1']:.2f}%) to {folder}", flush=True)
            if args.push_to_hub:
                result["hub_url"] = _push(args.push_to_hub, net, folder, card_metrics,
                                          cfg_overrides(data_cfg, data.label_names))
                print(f"uploaded to {result['hub_url']}", flush=True)
    acc.wait_for_everyone()
    return result


def _push(repo_id: str, net: Any, folder: Path, metrics: Dict[str, Any], overrides: Dict[str, Any]) -> str:
    try:
        from kan_zoo.hub import push_to_hub
    except ImportError:
        push_to_hub = None
    try:
        if push_to_hub is not None:
            return str(push_to_hub(net, repo_id, metrics=metrics, pretrained_cfg_overrides=overrides))
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id))
    except Exception as e:  # the export folder is safe on disk: say how to retry
        raise RuntimeError(f"upload to {repo_id!r} failed ({type(e).__name__}: {e}); the exported model is in "
                           f"{folder}; retry with huggingface-cli upload {repo_id} {folder}") from e
