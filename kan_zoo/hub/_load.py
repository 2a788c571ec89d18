"""Loading weights with errors that say which file, repo or key is wrong.

``create_pretrained_model`` is timm's own loading path (``timm.create_model(..., pretrained=True)``);
it only translates the failures whose messages from huggingface_hub / safetensors name no file.
"""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Dict

import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import SafetensorError
from timm.models import parse_model_name
from timm.models._hub import hf_split
from torch import nn

from ..errors import CheckpointMismatchError, CorruptCheckpointError, HubFileNotCachedError, UnknownModelError

__all__ = ["read_safetensors", "load_checkpoint_strict", "create_model_checked", "create_pretrained_model"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def read_safetensors(path: str | Path) -> Dict[str, torch.Tensor]:
    """Read a .safetensors file onto the CPU (never unpickles); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CorruptCheckpointError(path, str(e)) from e


def load_checkpoint_strict(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``model``, requiring every key and shape to match.

    Raises CheckpointMismatchError listing missing / unexpected keys and shape mismatches (all at
    once, unlike ``load_state_dict`` which stops at size mismatches); returns ``model``.
    """
    state = read_safetensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape))
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture")
        raise CheckpointMismatchError(path, missing, unexpected, shapes, model_name=arch)
    model.load_state_dict(state, strict=True)
    return model


def create_model_checked(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with kan_zoo registered and an unknown name reported as UnknownModelError."""
    import kan_zoo  # noqa: F401  registers the kan_* architectures (a no-op when already imported)

    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        found = re.fullmatch(r"Unknown model \((.*)\)", str(e))
        if found is None:
            raise
        arch = found.group(1)
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        # For hf-hub:/local-dir: names the architecture comes from the repo's config.json.
        origin = model_name if parse_model_name(model_name)[0] else None
        raise UnknownModelError(arch, close, origin=origin) from e


def _source_files(model_name: str) -> tuple[str | None, str | None, Path | None, Path | None]:
    """(repo_id, revision, config path, weights path) that timm reads for a hf-hub:/local-dir: name."""
    source, ref = parse_model_name(model_name)
    if source == "hf-hub":
        repo_id, revision = hf_split(ref)
        found = {}
        for fname in (CONFIG_NAME, WEIGHTS_NAME):
            hit = try_to_load_from_cache(repo_id, fname, revision=revision)
            found[fname] = Path(hit) if isinstance(hit, str) else None
        return repo_id, revision, found[CONFIG_NAME], found[WEIGHTS_NAME]
    if source == "local-dir":
        return None, None, Path(ref) / CONFIG_NAME, Path(ref) / WEIGHTS_NAME
    return None, None, None, None


def create_pretrained_model(model_name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, pretrained=True)`` whose failures name the repo and file.

    Accepts any timm name, including ``hf-hub:org/name[@revision]`` and ``local-dir:/path``.
    """
    try:
        return create_model_checked(model_name, pretrained=True, **kwargs)
    except LocalEntryNotFoundError as e:
        # huggingface_hub's message names neither repo nor file; timm also retries a missing
        # model.safetensors as pytorch_model.bin, so report the first file that is really absent.
        repo_id, _, config, weights = _source_files(model_name)
        if repo_id is None:
            raise
        missing = CONFIG_NAME if config is None else WEIGHTS_NAME if weights is None else "pytorch_model.bin"
        raise HubFileNotCachedError(repo_id, missing, hf_constants.HF_HUB_CACHE,
                                    offline=hf_constants.is_offline_mode()) from e
    except SafetensorError as e:
        _, _, _, weights = _source_files(model_name)
        raise CorruptCheckpointError(weights or model_name, str(e)) from e
    except json.JSONDecodeError as e:
        _, _, config, _ = _source_files(model_name)
        raise CorruptCheckpointError(config or model_name, f"invalid JSON: {e}") from e
