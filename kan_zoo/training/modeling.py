"""Model creation with the checks that must fail before training starts."""
from __future__ import annotations

import ast
import difflib
from typing import Any, Dict, List

import torch

__all__ = ["ModelError", "parse_model_kwargs", "create_model", "apply_peft"]


class ModelError(ValueError):
    """Unknown model name, or pretrained weights that do not fit the data."""


def parse_model_kwargs(items: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelError(f"--model-kwargs expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string such as basis=gram
    return out


def _check_name(name: str, flag: str = "--model") -> None:
    import timm

    if timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean one of {close}?" if close else ""
    what = "unknown model" if flag == "--model" else f"{flag}: unknown model"
    raise ModelError(f"{what} {name!r}: not registered in timm (kan_* models need `import kan_zoo`){hint}")


def create_model(args: Any, num_classes: int, in_chans: int) -> torch.nn.Module:
    """timm.create_model for the data's classes and channels.

    Pretrained weights keep their own head unless it has ``num_classes`` outputs already; a
    mismatch is an error unless ``--reset-head`` asks for a fresh classifier, because silently
    dropping a trained head is rarely what a user who asked for those weights meant.
    """
    import timm

    _check_name(args.model)
    kwargs = parse_model_kwargs(args.model_kwargs)
    if args.drop_rate is not None:
        kwargs["drop_rate"] = args.drop_rate
    if args.drop_path is not None:
        kwargs["drop_path_rate"] = args.drop_path
    pretrained = bool(args.pretrained or args.pretrained_file)
    if not pretrained:
        return timm.create_model(args.model, num_classes=num_classes, in_chans=in_chans, **kwargs)
    cfg = _pretrained_cfg(args.model)
    head = cfg.get("num_classes")
    if not args.pretrained_file and not any(cfg.get(k) for k in ("hf_hub_id", "url", "file", "state_dict")):
        raise ModelError(f"{args.model!r} has no published pretrained weights; drop --pretrained or pass "
                         f"--pretrained-file")
    if args.pretrained_file:
        import os

        weights = resolve_pretrained_path(args.pretrained_file, args.model)
        head = _head_size_in_file(weights, cfg.get("classifier")) or head
        kwargs["pretrained_cfg_overlay"] = dict(file=os.path.abspath(weights), num_classes=head)
    if head is not None and head != num_classes and not args.reset_head:
        raise ModelError(f"the pretrained head of {args.model!r} has {head} classes but the data has "
                         f"{num_classes}; pass --reset-head to train a new classifier")
    # With num_classes different from the weights' head, timm loads everything but the classifier.
    try:
        return timm.create_model(args.model, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as e:
        raise ModelError(f"could not load pretrained weights for {args.model!r}: {type(e).__name__}: {e}") from e


def apply_peft(model: torch.nn.Module, args: Any) -> bool:
    """Wraps the model's KAN convs for --peft-* (kan_zoo.peft.wrap_model, in place); whether it did."""
    from kan_zoo import peft

    from .config import peft_enabled

    if not peft_enabled(args):
        return False
    try:
        peft.wrap_model(model, extra_degrees=args.peft_extra_degrees or 0,
                        trainable_degrees=tuple(args.peft_trainable_degrees or ()), train_base=args.peft_train_base,
                        train_norms=args.peft_train_norms)
    except (TypeError, ValueError) as e:
        raise ModelError(f"--peft-* on {args.model!r}: {e}") from e
    return True


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_pretrained_path(path: str, model_name: str, flag: str = "--pretrained-path") -> str:
    """--pretrained-file/--pretrained-path to a weights file.

    A folder is taken as a kan_zoo / timm export (model.safetensors + config.json, what
    train_imagenet.py writes to OUTPUT/export): its config's architecture must be --model, since
    timm would otherwise load a state dict into the wrong network and fail far less clearly.
    Everything is read from disk, so fine-tuning runs offline.
    """
    import json
    import os

    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise ModelError(f"{'--pretrained-file' if flag == '--pretrained-path' else flag} {path!r} does not exist")
    found = [os.path.join(path, f) for f in _WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
    if not found:
        raise ModelError(f"{flag} {path!r} holds no {' or '.join(_WEIGHT_FILES)}")
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            arch = json.load(f).get("architecture")
        if arch and model_name and arch.split(".")[0] != model_name.split(".")[0]:
            what = "--model" if flag == "--pretrained-path" else "--teacher"
            raise ModelError(f"{flag} {path!r} holds a {arch!r}, not {what} {model_name!r}")
    return found[0]


def _pretrained_cfg(name: str) -> Dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    return cfg.to_dict() if cfg is not None else {}


def _head_size_in_file(path: str, classifier: Any) -> Any:
    """Output count of the classifier stored in a weights file, read without building the model."""
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0] if classifier else None
    if not classifier:
        return None
    key = f"{classifier}.weight"
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return f.get_slice(key).get_shape()[0] if key in f.keys() else None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else {}
    return state[key].shape[0] if key in state else None
