"""Training aids for KAN layers: regularisers and learning-rate / weight-decay parameter groups.

KAN layers are KANConvNd (and its subclasses KANLinear, the bottleneck) and KANActivation. Each
stores its functions' coefficients in ``weight``, viewed by ``coefficients()`` with the function
axis at dim 1; with ``base_folded`` the first function is the base branch, not a basis function.

Regularisers (each term is a per-layer mean, summed over layers, times its weight):

* ``smoothness``: squared second differences of the basis coefficients along the function axis,
  sum_i (c_{i+1} - 2 c_i + c_{i-1})^2 averaged over everything else. For a B-spline or RBF basis,
  whose functions sit on consecutive grid cells, it penalises the curvature of the learned
  functions; for polynomial bases it penalises uneven coefficient sequences, a weaker prior.
* ``l1_weights``: mean |c| of the basis coefficients (sparse functions, as the KAN paper prunes).
* ``act_l1`` / ``act_l2``: mean |y| / mean y^2 of every KAN layer's output y, collected by forward
  hooks during training-mode forward passes with gradients on (not during validation).

Usage::

    regs = RegularizerSet(smoothness=1e-3, act_l1=1e-4).attach(model)
    out = model(x)
    reg = regs.losses()                      # {"smoothness": tensor, "act_l1": tensor}
    loss = task_loss + sum(reg.values())     # log each term on its own
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .layers import KANActivation, KANConvNd

__all__ = [
    "kan_layers", "basis_coefficients", "smoothness_penalty", "l1_weight_penalty", "RegularizerSet",
    "param_groups", "REGULARIZER_NAMES",
]

REGULARIZER_NAMES = ("smoothness", "l1_weights", "act_l1", "act_l2")
_KAN_TYPES = (KANConvNd, KANActivation)


def kan_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """(name, module) of every KAN layer in ``model`` (KANConvNd and subclasses, KANActivation)."""
    for name, module in model.named_modules():
        if isinstance(module, _KAN_TYPES):
            yield name, module


def basis_coefficients(layer: nn.Module) -> torch.Tensor:
    """(C_out, K, ...) coefficients of the basis functions only (the base branch left out)."""
    coef = layer.coefficients()
    return coef[:, int(layer.base_folded):]


def smoothness_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over KAN layers of mean((c[:, i+1] - 2 c[:, i] + c[:, i-1])^2); layers with < 3 functions add 0."""
    total = _zero(model)
    for _, layer in kan_layers(model):
        c = basis_coefficients(layer)
        if c.shape[1] >= 3:
            d2 = c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]
            total = total + d2.pow(2).mean()
    return total


def l1_weight_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over KAN layers of mean |c| over their basis coefficients."""
    total = _zero(model)
    for _, layer in kan_layers(model):
        c = basis_coefficients(layer)
        if c.numel():
            total = total + c.abs().mean()
    return total


def _zero(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else None)


class RegularizerSet:
    """The regularisers with non-zero weight; ``losses()`` returns each weighted term by name.

    Activation terms need :meth:`attach` (forward hooks on every KAN layer); the hooks reduce
    each output to a scalar right away, so they hold no activations beyond the autograd graph.
    Call :meth:`losses` once per forward (it also clears the collected activation terms); under
    DDP attach to the unwrapped model, the hooks fire the same.
    """

    def __init__(self, smoothness: float = 0.0, l1_weights: float = 0.0, act_l1: float = 0.0,
                 act_l2: float = 0.0) -> None:
        self.weights: Dict[str, float] = {}
        for name, w in zip(REGULARIZER_NAMES, (smoothness, l1_weights, act_l1, act_l2)):
            if w < 0:
                raise ValueError(f"regulariser weight {name} must be >= 0, got {w}")
            if w > 0:
                self.weights[name] = float(w)
        self.model: Optional[nn.Module] = None
        self._handles: List[Any] = []
        self._acts: Dict[str, List[torch.Tensor]] = {"act_l1": [], "act_l2": []}

    @property
    def active(self) -> bool:
        return bool(self.weights)

    def attach(self, model: nn.Module) -> "RegularizerSet":
        self.detach()
        self.model = model
        if "act_l1" in self.weights or "act_l2" in self.weights:
            for _, layer in kan_layers(model):
                self._handles.append(layer.register_forward_hook(self._hook))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._clear()

    def _clear(self) -> None:
        for v in self._acts.values():
            v.clear()

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        # Only training passes that will be backpropagated: validation must not pile up terms.
        if not (module.training and torch.is_grad_enabled()):
            return
        y = output.float()
        if "act_l1" in self.weights:
            self._acts["act_l1"].append(y.abs().mean())
        if "act_l2" in self.weights:
            self._acts["act_l2"].append(y.pow(2).mean())

    def losses(self) -> Dict[str, torch.Tensor]:
        """{name: weight * term} for every active regulariser; clears the collected activations."""
        if self.model is None:
            raise RuntimeError("RegularizerSet.losses() before attach(model)")
        out: Dict[str, torch.Tensor] = {}
        if "smoothness" in self.weights:
            out["smoothness"] = self.weights["smoothness"] * smoothness_penalty(self.model)
        if "l1_weights" in self.weights:
            out["l1_weights"] = self.weights["l1_weights"] * l1_weight_penalty(self.model)
        for name in ("act_l1", "act_l2"):
            if name in self.weights:
                terms = self._acts[name]
                value = torch.stack(terms).sum() if terms else _zero(self.model)
                out[name] = self.weights[name] * value
        self._clear()
        return out

    def total(self) -> torch.Tensor:
        """Sum of :meth:`losses` (a zero tensor when nothing is active)."""
        return sum(self.losses().values(), _zero(self.model))


def param_groups(
    model: nn.Module,
    basis_lr_mult: float = 1.0,
    basis_wd_mult: float = 1.0,
    weight_decay: float = 0.0,
    lr: Optional[float] = None,
    no_weight_decay_1d: bool = True,
) -> List[Dict[str, Any]]:
    """Parameter groups for ``timm.optim.create_optimizer_v2`` (or any torch optimizer).

    "basis" parameters are every KAN layer's ``weight`` (its coefficient table) and its basis's
    parameters (relu phases, Gram betas, wavelet scale/translation/weights); everything else
    (norms, plain convs, heads) is "other". Each group carries ``lr_scale`` (timm's schedulers
    multiply the scheduled lr by it) and its own ``weight_decay``; with ``lr`` given, ``lr`` is set
    too, for optimizers driven without a timm scheduler. As in timm, 1-D parameters (norm scales,
    biases, betas) get no weight decay when ``no_weight_decay_1d``.

    Note: a KANConvNd fuses the base branch's kernel into the same ``weight`` tensor as the basis
    coefficients (one grouped conv), so the base kernel follows the basis multipliers.
    """
    basis_modules = {id(m.basis) for _, m in kan_layers(model)}
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        in_basis = id(module) in basis_modules
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_basis = in_basis or (isinstance(module, _KAN_TYPES) and param_name == "weight")
            # Grid positions and shape parameters of a basis (relu phases, wavelet scale and
            # translation) are not weights: decaying them towards 0 would collapse the grid.
            shape_param = in_basis and not param_name.endswith("weight")
            decay = not shape_param and (p.ndim > 1 or not no_weight_decay_1d)
            groups.setdefault((is_basis, decay), []).append(p)
    out = []
    for (is_basis, decay), params in sorted(groups.items()):
        mult = basis_lr_mult if is_basis else 1.0
        wd = (weight_decay * (basis_wd_mult if is_basis else 1.0)) if decay else 0.0
        group: Dict[str, Any] = {"params": params, "weight_decay": wd, "lr_scale": mult,
                                 "name": f"{'basis' if is_basis else 'other'}{'' if decay else '_no_decay'}"}
        if lr is not None:
            group["lr"] = lr * mult
        out.append(group)
    return out
