"""Training aids wired into train_imagenet.py: KAN regularisers, parameter groups (basis multipliers,
layer-wise lr decay), backbone freezing for fine-tuning, and periodic grid refits.

Decisions worth knowing:

* ``--freeze-backbone`` freezes every parameter outside ``get_classifier()`` and keeps the norm
  layers of the frozen part in eval mode: their running statistics are part of the backbone, and
  letting them drift would change the features the new head is fitted on (and the exported model).
* Grid refits (``--grid-update-every``) restart the EMA from the model's weights: an average of
  coefficients expressed on the old grid means nothing on the new one.
* Grid growth (``--grid-grow``) replaces parameters. In one process the optimizer's param groups are
  patched in place (the new tensors take the old ones' slots, their optimizer moments start at
  zero); with several processes the DDP wrapper would keep the old tensors, so it is refused.
* Refitted grid state (knots, rbf width, relu bell scale) is in the model's state_dict, and a
  grown layer resizes itself to a checkpoint's grid size while loading, so an export reloads
  faithfully through timm alone. A resume still needs the grid sizes *before* the optimizer is
  built (accelerate restores the weights after it): checkpoints carry them in ``grid_state.json``,
  and the resume re-grows the layers from it first.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from .config import ConfigError
from .modeling import ModelError

__all__ = ["GRID_STATE_FILE", "build_regularizers", "optimizer_params", "freeze_backbone", "GridRefresher",
           "grid_state", "apply_grid_state", "read_grid_state", "group_summary"]

GRID_STATE_FILE = "grid_state.json"
# Plain (non-state_dict) attributes of the grid bases; descriptive only (the repr), kept for resumes.
_GRID_ATTRS = ("grid_range",)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def build_regularizers(args: Any, model: nn.Module) -> Optional[Any]:
    """The RegularizerSet of the --reg-* flags attached to ``model`` (unwrapped), or None when all are 0."""
    from kan_zoo.regularizers import RegularizerSet, kan_layers

    regs = RegularizerSet(smoothness=args.reg_smoothness, l1_weights=args.reg_l1_weights,
                          act_l1=args.reg_act_l1, act_l2=args.reg_act_l2)
    if not regs.active:
        return None
    if not any(True for _ in kan_layers(model)):
        raise ConfigError(f"--reg-* flags need KAN layers, and {args.model!r} has none")
    # Hooks go on the plain modules: a DDP wrapper calls the same modules, so they fire there too.
    return regs.attach(model)


def freeze_backbone(model: nn.Module) -> List[nn.Module]:
    """Freezes all parameters outside get_classifier(); returns the frozen part's norm layers."""
    if not hasattr(model, "get_classifier"):
        raise ModelError(f"--freeze-backbone needs a model with get_classifier(); {type(model).__name__} has none")
    head = model.get_classifier()
    head_params = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    if not head_params:
        raise ModelError("--freeze-backbone: the model's classifier has no parameters (num_classes=0?)")
    for p in model.parameters():
        p.requires_grad_(id(p) in head_params)
    head_modules = {id(m) for m in head.modules()}
    return [m for m in model.modules() if isinstance(m, _NORMS) and id(m) not in head_modules]


def optimizer_params(model: nn.Module, args: Any) -> Union[nn.Module, List[Dict[str, Any]]]:
    """What create_optimizer_v2 gets: the model itself (timm groups it, with --layer-decay if given),
    or explicit groups when --basis-lr-mult / --basis-wd-mult ask for basis groups.

    Groups carry ``lr_scale``, which timm's schedulers multiply the scheduled lr by, so warmup and
    decay apply to every group alike. With --layer-decay too, a parameter's lr_scale is the product
    of its basis multiplier and its layer's decay factor.
    """
    if args.layer_decay is not None and not hasattr(model, "group_matcher"):
        raise ModelError(f"--layer-decay needs a model with group_matcher() (to tell its layers apart); "
                         f"{args.model!r} has none")
    if args.basis_lr_mult == 1.0 and args.basis_wd_mult == 1.0:
        return model
    from kan_zoo.regularizers import kan_layers, param_groups

    if not any(True for _ in kan_layers(model)):
        raise ConfigError(f"--basis-lr-mult / --basis-wd-mult need KAN layers, and {args.model!r} has none")
    groups = param_groups(model, basis_lr_mult=args.basis_lr_mult, basis_wd_mult=args.basis_wd_mult,
                          weight_decay=args.weight_decay)
    if args.layer_decay is None:
        return groups
    from timm.optim import param_groups_layer_decay

    # timm's groups only serve as the map parameter -> layer scale; weight decay comes from ours.
    layer_scale = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model, 0.0, layer_decay=args.layer_decay)
                   for p in g["params"]}
    split: Dict[Any, Dict[str, Any]] = {}
    for g in groups:
        for p in g["params"]:
            scale = layer_scale.get(id(p), 1.0)
            key = (g["name"], scale)
            if key not in split:
                split[key] = {"params": [], "weight_decay": g["weight_decay"], "lr_scale": g["lr_scale"] * scale,
                              "name": f"{g['name']}@{scale:.4g}"}
            split[key]["params"].append(p)
    return list(split.values())


def group_summary(optimizer: Any) -> List[Dict[str, Any]]:
    """Name, lr, lr_scale, weight decay and size of each param group (for logs, results and tests)."""
    out = []
    for i, g in enumerate(optimizer.param_groups):
        out.append({"name": g.get("name", f"group_{i}"), "lr": float(g["lr"]), "lr_scale": float(g.get("lr_scale", 1.0)),
                    "weight_decay": float(g.get("weight_decay", 0.0)),
                    "params": int(sum(p.numel() for p in g["params"]))})
    return out


def grid_state(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """{layer: {grid_size, attrs}} for every grid-based KAN layer: what a resume needs beyond state_dict()."""
    from kan_zoo.grid import grid_layers

    out = {}
    for name, layer in grid_layers(model):
        attrs = {}
        for a in _GRID_ATTRS:
            v = getattr(layer.basis, a, None)
            if v is not None and not isinstance(v, torch.Tensor):
                attrs[a] = list(v) if isinstance(v, tuple) else float(v)
        out[name] = {"grid_size": int(layer.basis.grid_size), "attrs": attrs}
    return out


@torch.no_grad()
def apply_grid_state(model: nn.Module, state: Dict[str, Dict[str, Any]]) -> bool:
    """Re-grows layers to the saved grid sizes and restores the plain attributes; returns True if
    any layer changed shape. Parameter *values* come afterwards, from the checkpoint's state_dict."""
    from kan_zoo.grid import grid_layers, update_grid

    layers = dict(grid_layers(model))
    grew = False
    for name, saved in state.items():
        if name not in layers:
            raise ConfigError(f"checkpoint grid state names layer {name!r}, which this model does not have")
        layer = layers[name]
        if saved["grid_size"] != layer.basis.grid_size:
            # Any samples give the right shapes; the values are overwritten when the checkpoint loads.
            c = layer.basis.channels
            samples = torch.linspace(-1.0, 1.0, 64, device=layer.weight.device, dtype=layer.weight.dtype)
            update_grid(layer, samples=samples[:, None].expand(64, c).contiguous(), grid_size=saved["grid_size"])
            grew = True
        for a, v in saved["attrs"].items():
            current = getattr(layer.basis, a, None)
            if isinstance(current, torch.Tensor):
                # grid_state.json written before rbf width / relu scale became buffers: fill in place.
                current.fill_(float(v))
            else:
                setattr(layer.basis, a, tuple(v) if isinstance(v, list) else v)
    return grew


def _copy_grid_attrs(src: nn.Module, dst: nn.Module) -> None:
    apply_grid_state(dst, grid_state(src))


class GridRefresher:
    """Runs kan_zoo.grid.GridUpdater after optimizer updates and repairs what a refit invalidates."""

    def __init__(self, args: Any, accelerator: Any, model: nn.Module) -> None:
        from kan_zoo.grid import GridUpdater, grid_layers

        if not grid_layers(model):
            raise ConfigError(f"--grid-update-every needs KAN layers with a grid (bspline, rbf or relu bases); "
                              f"{args.model!r} has none")
        if args.grid_grow and accelerator.num_processes > 1:
            raise ConfigError("--grid-grow replaces parameters, which a multi-process (DDP) run cannot follow; "
                              "grow the grid in a single-process run, or refit without --grid-grow")
        gather = accelerator.gather if accelerator.num_processes > 1 else None
        self.updater = GridUpdater(args.grid_update_every, grow=args.grid_grow, max_grid_size=args.grid_max_size,
                                   all_gather=gather, grid_eps=args.grid_eps)
        self.refits = 0

    def __call__(self, model: nn.Module, optimizer: Any, ema: Optional[Any], step: int, x: torch.Tensor) -> bool:
        """Refits on ``x`` when ``step`` is due (all processes together); returns whether it ran."""
        if step <= 0 or step % self.updater.every:
            return False
        before = dict(model.named_parameters())
        grew = self.updater.maybe_update(model, step, x)
        self.refits += 1
        if grew:
            _swap_params(optimizer, before, dict(model.named_parameters()))
        if ema is not None:
            if grew:  # shapes changed: the EMA copy must be rebuilt from the model
                fresh = copy.deepcopy(model).eval().requires_grad_(False)
                ema.module = fresh.to(device=getattr(ema, "device", None) or next(model.parameters()).device)
            else:
                ema.set(model)  # state_dict copy: knots, rbf width and relu scale included
                _copy_grid_attrs(model, ema.module)  # grid_range, for an honest repr
        return True


def _swap_params(optimizer: Any, before: Dict[str, nn.Parameter], after: Dict[str, nn.Parameter]) -> None:
    """Puts replaced Parameters into the optimizer slots of the ones they replace; their state restarts."""
    if set(before) != set(after):
        raise RuntimeError(f"grid growth changed parameter names ({sorted(set(before) ^ set(after))}); "
                           f"cannot patch the optimizer")
    moved = {id(before[n]): after[n] for n in before if before[n] is not after[n]}
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if id(p) in moved:
                optimizer.state.pop(p, None)
                group["params"][i] = moved[id(p)]


def read_grid_state(folder: Path) -> Optional[Dict[str, Dict[str, Any]]]:
    path = Path(folder) / GRID_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
