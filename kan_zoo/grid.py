"""Adaptive grid refinement for the grid-based bases (bspline, rbf, relu), as in the KAN paper.

A grid fixed at initialisation covers the range its layer's inputs had then; as training moves
those inputs, values outside the grid fall where every basis function is (nearly) zero and the
layer keeps only its base branch there. ``update_grid(layer, x)`` moves the grid to the inputs
``x`` the layer sees now, and re-solves the coefficients by least squares so that, on those
inputs, every edge function phi(x) = sum_i c_i B_i(x) stays what it was:

    A_new C_new = A_old C_old     (A: samples x functions, one system per input channel)

Where the grid lives, and how it is refitted:

* bspline: one knot vector shared by all channels (``BSplineBasis.grid``). New knots: the
  quantiles of the pooled inputs, mixed with a uniform grid over [min, max] by ``grid_eps``
  (1 = uniform, 0 = fully adaptive; the KAN paper uses 0.02), extended by ``degree`` cells of the
  end spacing on each side.
* rbf: one set of centres shared by all channels, with one width (buffer ``inv_width``): uniform
  over [min, max] of the inputs of the basis (which, in KANConvNd, are the layer's input-norm outputs).
* relu: per-channel phases (``phase_low``/``phase_high``): a uniform grid over each channel's own
  [min, max]; the bell scale r (buffer ``scale``) follows the mean cell width so bells stay O(1).

[min, max] gets a ``margin`` (fraction of the span) so the extremes are inside the grid.

Grid growth: ``grid_size`` larger than the current one changes the number of functions, so the
layer's ``weight`` (and, for relu, the phase parameters) are REPLACED by new Parameters, and its
basis by a new module. An optimizer (and a DDP wrapper) built before holds the old tensors:
rebuild them after a grow (``GridUpdater.maybe_update`` says when). Without growth the update is
in place and the same Parameter objects stay (optimizer moments then refer to the old grid's
coefficients; they fade out quickly).

Saving and reloading: everything a refit changes is in the layer's state_dict (knots, centres,
rbf width, relu phases and scale, coefficients), so a refitted model's checkpoint or
``kan_zoo.hub`` export reloads exactly. A GROWN layer's checkpoint has other shapes than the
architecture's default: KANConvNd and KANActivation resize their basis and ``weight`` to the
checkpoint's grid size while loading (``kan_zoo.layers.helpers.match_checkpoint_grid``), so
``timm.create_model("local-dir:...", pretrained=True)`` of a grown export just works, per layer.
The resize happens only when the checkpoint's basis entries and weight have exactly the shapes of
this layer at that grid size; anything else (other channels, kernel, degree) is left to the
ordinary strict shape check, which still fails. As after a grow, the resized layers have new
Parameters: load before building an optimizer (timm does).

Distributed training: pass ``all_gather``, a callable that takes a tensor (S, C) and returns the
concatenation over all processes along dim 0 (``accelerator.gather`` does that); every process
then fits the same grid and solves the same systems, so the replicas stay identical.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .layers import KANActivation, KANConvNd, KANLinear
from .layers.bases import BSplineBasis, RBFBasis, ReLUBasis

__all__ = ["GRID_BASES", "update_grid", "update_grids", "grid_layers", "grid_coverage", "GridUpdater"]

GRID_BASES = ("bspline", "rbf", "relu")
AllGather = Callable[[torch.Tensor], torch.Tensor]


def grid_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """KANConvNd / KANLinear / KANActivation layers of ``model`` whose basis has a grid.

    Bottleneck layers are left out: their basis input is a learned 1x1 projection of x, not x.
    """
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, (KANConvNd, KANActivation)) or m.basis.name not in GRID_BASES:
            continue
        if isinstance(m, KANConvNd) and type(m)._core_shape is not KANConvNd._core_shape:
            continue
        out.append((name, m))
    return out


def _check_layer(layer: nn.Module) -> None:
    if not isinstance(layer, (KANConvNd, KANActivation)):
        raise TypeError(f"update_grid needs a KANConvNd or KANActivation, got {type(layer).__name__}")
    if layer.basis.name not in GRID_BASES:
        raise ValueError(f"basis {layer.basis.name!r} has no grid; grid refinement applies to {GRID_BASES}")
    if isinstance(layer, KANConvNd) and type(layer)._core_shape is not KANConvNd._core_shape:
        raise TypeError(f"{type(layer).__name__} feeds its basis a projection of x; grid refinement is not supported")


@torch.no_grad()
def basis_input_samples(layer: nn.Module, x: torch.Tensor, max_samples: int = 4096,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(S, C) values of the basis domain t = prepare(u) the layer would see for input ``x``.

    u is x, or the input norm's output for bases that normalise their input (rbf; the norm runs
    in eval mode here, so a BatchNorm uses its running statistics and they do not change).
    S <= max_samples positions are drawn at random (the same positions for every channel).
    """
    if isinstance(layer, KANLinear):
        x = x.reshape(-1, layer.in_features, 1)
    channels = layer.in_channels if isinstance(layer, KANConvNd) else layer.channels
    if x.ndim < 2 or x.shape[1] != channels:
        raise ValueError(f"expected an input with {channels} channels at dim 1, got shape {tuple(x.shape)}")
    u = x
    if isinstance(layer, KANConvNd) and layer.basis.normalizes_input:
        was_training = layer.norm.training
        layer.norm.eval()
        try:
            u = layer.norm(x)
        finally:
            layer.norm.train(was_training)
    t = layer.basis.prepare(u).transpose(0, 1).reshape(channels, -1)  # (C, N * L)
    if t.shape[1] > max_samples:
        idx = torch.randperm(t.shape[1], generator=generator, device="cpu")[:max_samples].to(t.device)
        t = t[:, idx]
    return t.t().contiguous()


def _basis_matrix(basis: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """(C, S, K) values of the K basis functions at t (C, S)."""
    return torch.stack(basis.expand(t.unsqueeze(0)), dim=-1)[0]


def _edge_coefficients(layer: nn.Module) -> torch.Tensor:
    """The basis coefficients as one (C_in, K, M) matrix per input channel (M: outputs x kernel taps)."""
    first = int(layer.base_folded)
    if isinstance(layer, KANActivation):
        return layer.weight[:, first:].unsqueeze(-1)
    coef = layer.coefficients()[:, first:]  # (C_out, K, c, *k)
    g = layer.groups
    o, k, c = coef.shape[0] // g, coef.shape[1], coef.shape[2]
    coef = coef.reshape(g, o, k, c, -1).permute(0, 3, 2, 1, 4)  # (G, c, K, o, P)
    return coef.reshape(g * c, k, -1)


def _layer_weight(layer: nn.Module, edge: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_edge_coefficients`: the full weight with the new (C_in, K', M) coefficients."""
    first = int(layer.base_folded)
    if isinstance(layer, KANActivation):
        return torch.cat([layer.weight[:, :first], edge.squeeze(-1)], dim=1)
    coef = layer.coefficients()
    g, kernel = layer.groups, coef.shape[3:]
    o, c, k_new = coef.shape[0] // g, coef.shape[2], edge.shape[1]
    new = edge.reshape(g, c, k_new, o, -1).permute(0, 3, 2, 1, 4).reshape(g * o, k_new, c, *kernel)
    return torch.cat([coef[:, :first], new], dim=1).flatten(1, 2)


def _span(t: torch.Tensor, margin: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """min and max along the last dim, widened by ``margin`` of the span (and never empty)."""
    lo, hi = t.amin(-1), t.amax(-1)
    pad = (hi - lo) * margin + 1e-4
    return lo - pad, hi + pad


def _new_basis(layer: nn.Module, t: torch.Tensor, grid_size: int, margin: float, grid_eps: float) -> nn.Module:
    """A basis of the layer's kind with ``grid_size`` cells fitted to t (C, S)."""
    old = layer.basis
    channels, degree = old.channels, old.degree
    if isinstance(old, BSplineBasis):
        flat = t.reshape(-1).double()
        lo, hi = _span(flat, margin)
        qs = torch.linspace(0, 1, grid_size + 1, dtype=torch.float64, device=flat.device)
        adaptive = torch.quantile(flat, qs)
        adaptive[0], adaptive[-1] = lo, hi
        uniform = torch.linspace(float(lo), float(hi), grid_size + 1, dtype=torch.float64, device=flat.device)
        inner = grid_eps * uniform + (1 - grid_eps) * adaptive
        # Keep the knots strictly increasing (repeated quantiles would make empty cells).
        inner = torch.maximum(inner, inner[0] + (hi - lo) * 1e-6 * torch.arange(grid_size + 1, device=flat.device))
        inner = torch.cummax(inner, 0).values
        steps = torch.arange(1, degree + 1, dtype=torch.float64, device=flat.device)
        left = inner[0] - (inner[1] - inner[0]) * steps.flip(0)
        right = inner[-1] + (inner[-1] - inner[-2]) * steps
        new = BSplineBasis(channels, degree, grid_size=grid_size, grid_range=(float(lo), float(hi)))
        new.grid = torch.cat([left, inner, right]).to(old.grid.dtype)
    elif isinstance(old, RBFBasis):
        lo, hi = _span(t.reshape(-1), margin)
        new = RBFBasis(channels, degree, grid_size=grid_size, grid_range=(float(lo), float(hi)))
    elif isinstance(old, ReLUBasis):
        lo, hi = _span(t, margin)  # per channel
        h = ((hi - lo) / grid_size).unsqueeze(1)
        i = torch.arange(grid_size + degree, dtype=t.dtype, device=t.device)
        new = ReLUBasis(channels, degree, grid_size=grid_size, train_phases=old.phase_low.requires_grad)
        with torch.no_grad():
            new.phase_low.copy_(lo.unsqueeze(1) + (i - degree) * h)
            new.phase_high.copy_(new.phase_low + (degree + 1) * h)
            new.scale.fill_(4.0 / float(((degree + 1) * h.mean()) ** 2))
    else:  # pragma: no cover - guarded by _check_layer
        raise ValueError(f"no grid refinement for {type(old).__name__}")
    return old._like(new)


def grid_coverage(layer: nn.Module, t: torch.Tensor) -> float:
    """Fraction of basis-domain samples t (S, C) where the layer's basis functions are not all ~0."""
    with torch.no_grad():
        a = _basis_matrix(layer.basis, t.t().to(next(layer.parameters()).dtype))
        return float((a.abs().amax(-1) > 1e-3).float().mean())


@torch.no_grad()
def update_grid(
    layer: nn.Module,
    x: Optional[torch.Tensor] = None,
    *,
    samples: Optional[torch.Tensor] = None,
    grid_size: Optional[int] = None,
    margin: float = 0.01,
    grid_eps: float = 0.02,
    max_samples: int = 4096,
    all_gather: Optional[AllGather] = None,
    generator: Optional[torch.Generator] = None,
) -> bool:
    """Refits ``layer``'s grid to its input ``x`` (or to precomputed basis-domain ``samples`` (S, C))
    and re-solves its coefficients; returns True when the parameters were replaced (grid grew or shrank).

    ``grid_size``: the new number of grid cells (default: unchanged). ``all_gather``: see the module doc.
    """
    _check_layer(layer)
    if samples is None:
        if x is None:
            raise ValueError("update_grid needs the layer input x or basis-domain samples")
        samples = basis_input_samples(layer, x, max_samples, generator)
    if all_gather is not None:
        samples = all_gather(samples.contiguous())
    # Solve in float64: the systems are small, and float32 normal equations lose the tolerance.
    t = samples.t().double()  # (C, S)
    old_basis = layer.basis
    size = old_basis.grid_size if grid_size is None else int(grid_size)
    # The bases cast their grids to the input's dtype, so both matrices are evaluated in float64.
    target = _basis_matrix(old_basis, t) @ _edge_coefficients(layer).double()  # (C, S, M)
    new_basis = _new_basis(layer, t, size, margin, grid_eps)
    a_new = _basis_matrix(new_basis, t)
    solution = _lstsq(a_new, target)
    weight = _layer_weight(layer, solution.to(layer.weight.dtype))
    replaced = new_basis.num_functions != old_basis.num_functions
    if replaced:
        layer.basis = new_basis
        layer.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
        layer.num_functions = int(layer.base_folded) + new_basis.num_functions
    else:
        # In place (grid, rbf inv_width, relu scale and phases are all state_dict entries), so the
        # optimizer, an EMA and DDP keep holding the same tensors.
        old_basis.load_state_dict(new_basis.state_dict())
        if hasattr(new_basis, "grid_range"):  # descriptive only (repr); not needed to compute
            old_basis.grid_range = new_basis.grid_range
        layer.weight.copy_(weight)
    return replaced


def _lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Least squares per channel with a small ridge, so functions that no sample touches get 0."""
    k = a.shape[-1]
    gram = a.transpose(-1, -2) @ a
    ridge = 1e-8 * gram.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)
    gram = gram + torch.diag_embed(ridge.expand(-1, k))
    return torch.linalg.solve(gram, a.transpose(-1, -2) @ b)


@torch.no_grad()
def update_grids(
    model: nn.Module,
    x: torch.Tensor,
    *,
    grid_size: Optional[int] = None,
    grow: int = 0,
    max_grid_size: Optional[int] = None,
    all_gather: Optional[AllGather] = None,
    **kwargs: Any,
) -> Dict[str, bool]:
    """Runs ``model(x)`` once, collecting each grid layer's input, then updates every grid layer.

    Each layer's new size is ``grid_size``, else its current size + ``grow``, capped at
    ``max_grid_size``. Returns {layer name: whether its parameters were replaced}. All processes
    must call this together when ``all_gather`` is given (it gathers once per layer, in order).
    ``kwargs`` go to :func:`update_grid` (margin, grid_eps, max_samples). Pass the unwrapped model
    (not the DDP wrapper); it runs in eval mode, so BatchNorm layers use their running statistics.
    Layers the forward pass does not reach are left alone.
    """
    layers = grid_layers(model)
    samples: Dict[str, torch.Tensor] = {}
    max_samples = kwargs.pop("max_samples", 4096)

    def hook(name):
        def fn(module, inputs, output):
            samples[name] = basis_input_samples(module, inputs[0], max_samples)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    was_training = model.training
    try:
        model.eval()  # no dropout and no running-stat updates while measuring
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    replaced = {}
    for name, layer in layers:
        if name not in samples:
            continue
        size = grid_size if grid_size is not None else layer.basis.grid_size + grow
        if max_grid_size is not None:
            size = min(size, max(max_grid_size, layer.basis.grid_size))
        replaced[name] = update_grid(layer, samples=samples[name], grid_size=size, all_gather=all_gather, **kwargs)
    return replaced


class GridUpdater:
    """The training option: every ``every`` optimizer updates, refit the grids on the current batch.

    ``grow`` cells are added per update up to ``max_grid_size``. ``maybe_update`` returns True when
    some parameters were replaced, i.e. the optimizer (and DDP wrapper) must be rebuilt. After any
    update an EMA copy of the model holds the old grid: re-set it from the model (ModelEmaV3.set,
    which copies the state_dict, grid buffers included). A checkpoint written after a grow loads
    into the default architecture too (see "Saving and reloading" in the module doc).
    """

    def __init__(self, every: int, grow: int = 0, max_grid_size: Optional[int] = None,
                 all_gather: Optional[AllGather] = None, **kwargs: Any) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.grow, self.max_grid_size = every, grow, max_grid_size
        self.all_gather, self.kwargs = all_gather, kwargs

    def maybe_update(self, model: nn.Module, step: int, x: torch.Tensor) -> bool:
        """Refits the grids when ``step`` (optimizer updates so far) is a multiple of ``every``."""
        if step <= 0 or step % self.every:
            return False
        replaced = update_grids(model, x, grow=self.grow, max_grid_size=self.max_grid_size,
                                all_gather=self.all_gather, **self.kwargs)
        return any(replaced.values())
