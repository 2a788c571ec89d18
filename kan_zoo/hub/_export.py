"""Export a timm/kan_zoo model to a folder in timm's Hub format, atomically."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import safetensors.torch
import torch
from timm.models._hub import save_config_for_hf
from torch import nn

from ._card import make_model_card
from ._load import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["export_to_folder", "build_config", "export_state_dict", "unwrap_model"]

README_NAME = "README.md"
# Where the source weights came from / what they were called: wrong for the weights we write.
# (timm's filter drops url/file/hf_hub_id/hf_hub_filename/source; the tag names the source weights too.)
# Facts about the SOURCE checkpoint (its tag; notes carry its published accuracy, size, recipe):
# exported weights are new weights, whose metrics come from export_to_folder(metrics=...).
_STALE_CFG_KEYS = ("tag", "notes")
# Overrides that would make loaders fetch weights from somewhere other than the exported folder.
_FORBIDDEN_OVERRIDES = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile / (Distributed)DataParallel wrappers, whose keys are prefixed."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def export_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors with no two keys sharing memory.

    safetensors refuses aliased tensors (tied weights, views of one buffer). Rather than dropping the
    duplicates, as ``safetensors.torch.save_model`` does, each alias gets its own copy: timm loads
    pretrained weights with strict=True and would then report the dropped keys as missing.
    """
    seen: set[int] = set()
    tensors: Dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen or tensor.numel() == 0:
            tensor = tensor.clone()
        else:
            seen.add(ptr)
        tensors[name] = tensor.contiguous()
    return tensors


def build_config(model: nn.Module, pretrained_cfg_overrides: Mapping[str, Any] | None = None) -> Dict[str, Any]:
    """timm-format config.json content for ``model`` (what ``load_model_config_from_hf`` reads back).

    timm's ``save_config_for_hf`` does the work; two changes follow it:
    * ``num_classes`` is removed from ``model_args``. timm takes the class count from the top-level
      ``num_classes`` anyway, while transformers' TimmWrapper passes ``num_classes=`` itself and then
      ``**model_args``, failing with "got multiple values for keyword argument 'num_classes'".
    * the source checkpoint's ``tag`` and ``notes`` are dropped, and ``pretrained_cfg_overrides`` are applied last so
      they win over values timm derives.
    """
    overrides = dict(pretrained_cfg_overrides or {})
    bad = sorted(set(overrides) & set(_FORBIDDEN_OVERRIDES))
    if bad:
        raise ValueError(f"pretrained_cfg_overrides may not set {bad}: loaders must read the exported weights")
    if "architecture" in overrides and overrides["architecture"] != model.pretrained_cfg.get("architecture"):
        raise ValueError("pretrained_cfg_overrides['architecture'] differs from the model's architecture")
    if "num_classes" in overrides and overrides["num_classes"] != model.num_classes:
        raise ValueError(f"pretrained_cfg_overrides['num_classes'] differs from the model's ({model.num_classes})")

    # save_config_for_hf only writes to a path, so it writes to a scratch folder and is read back.
    with tempfile.TemporaryDirectory(prefix="kan_zoo_cfg_") as tmp:
        path = Path(tmp) / CONFIG_NAME
        save_config_for_hf(model, str(path), model_config={"pretrained_cfg": dict(overrides)})
        config = json.loads(path.read_text(encoding="utf-8"))

    model_args = config.get("model_args", {})
    model_args.pop("num_classes", None)
    if model_args:
        config["model_args"] = model_args
    else:
        config.pop("model_args", None)
    pretrained_cfg = config["pretrained_cfg"]
    for key in _STALE_CFG_KEYS:
        if key not in overrides:
            pretrained_cfg.pop(key, None)
    # Labels live at the config's root, where both timm and transformers (id2label) read them.
    for key in ("label_names", "label_descriptions"):
        value = overrides.pop(key) if key in overrides else pretrained_cfg.get(key, config.get(key))
        pretrained_cfg.pop(key, None)
        if value:
            config[key] = list(value) if isinstance(value, tuple) else value
    names = config.get("label_names")
    if isinstance(names, (list, tuple)) and len(names) != model.num_classes:
        raise ValueError(f"label_names has {len(names)} entries but the model has {model.num_classes} classes")
    # json round trip turns tuples into lists, as timm's own writer does
    pretrained_cfg.update(json.loads(json.dumps(overrides)))
    return config


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _publish(staging: Path, folder: Path) -> None:
    """Move the staged files into ``folder``: one rename for a new folder, else os.replace per file.

    Either way a reader never sees a half-written file. Other files already in ``folder`` stay.
    """
    if not folder.exists():
        try:
            staging.rename(folder)
            return
        except OSError:
            if not folder.is_dir():  # not a lost race with another writer creating it: a real error
                raise
    if not folder.is_dir():
        raise NotADirectoryError(f"export target exists and is not a directory: {folder}")
    # weights first, config last: a reader that sees the new config.json also sees the new weights
    names = sorted(p.name for p in staging.iterdir())
    order = [n for n in (WEIGHTS_NAME, README_NAME) if n in names]
    order += [n for n in names if n not in (WEIGHTS_NAME, README_NAME, CONFIG_NAME)]
    order += [CONFIG_NAME] if CONFIG_NAME in names else []
    for name in order:
        os.replace(staging / name, folder / name)
    staging.rmdir()


def export_to_folder(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    metrics: Mapping[str, Any] | None = None,
    model_card: str | None = None,
    pretrained_cfg_overrides: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for ``model`` into ``folder``.

    The result loads with ``timm.create_model("local-dir:<folder>", pretrained=True)``, or from the
    Hub as ``hf-hub:<repo_id>`` once uploaded, and with transformers' AutoModelForImageClassification.

    Args:
        model: a timm-built model (has ``pretrained_cfg``, ``num_classes``, ``num_features``).
        folder: target folder; created if missing. Files other than the three written are left alone.
        metrics: evaluation results for the card's metrics table, e.g. ``{"top1": 71.3}``.
        model_card: full README.md text to write instead of the generated card.
        pretrained_cfg_overrides: values for config.json's ``pretrained_cfg`` (``license``, ``mean``,
            ``label_names``...); they win over the model's own.
        repo_id: Hub repo the folder is meant for; only used in the card's usage snippet.
        label_names: class names, one per output (same as ``pretrained_cfg_overrides["label_names"]``).
    Returns:
        the folder's path.
    """
    model = unwrap_model(model)
    if not hasattr(model, "pretrained_cfg"):
        raise TypeError(f"{type(model).__name__} has no pretrained_cfg: build it with timm.create_model()")
    folder = Path(folder).expanduser().absolute()
    if label_names is not None:
        pretrained_cfg_overrides = {**(pretrained_cfg_overrides or {}), "label_names": list(label_names)}
    config = build_config(model, pretrained_cfg_overrides)
    card = model_card if model_card is not None else make_model_card(model, config, repo_id=repo_id,
                                                                      metrics=metrics)

    folder.parent.mkdir(parents=True, exist_ok=True)
    # staged beside the target, on the same filesystem, so the final rename/replace is atomic
    staging = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        safetensors.torch.save_file(export_state_dict(model), str(staging / WEIGHTS_NAME),
                                    metadata={"format": "pt"})  # transformers expects format=pt
        _write_json(staging / CONFIG_NAME, config)
        (staging / README_NAME).write_text(card, encoding="utf-8")
        _publish(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
