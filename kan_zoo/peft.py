"""Parameter-efficient fine-tuning (PEFT) of pretrained KAN convs, and merging it back into a plain model.

    import kan_zoo.peft
    kan_zoo.peft.wrap_model(model, extra_degrees=1, trainable_degrees=(0, 1))  # in place; returns model
    ...train: only the adapters, the norms and the classifier have requires_grad...
    kan_zoo.peft.merge(model)  # in place: plain KAN convs of degree D + 1, exported like any other model

A wrapped KAN conv keeps its pretrained tensors frozen and gets an adapter (``layer.adapter``, a
:class:`KANConvAdapter`) that adds the convolution of further basis functions of the same input, before the
norm, as torch-conv-kan's PEFTKAGNConvNDLayer does for Gram layers:
  * ``extra_degrees`` E: the functions of degrees D + 1 .. D + E, with zero-initialised kernels (and, for Gram,
    zero-initialised recurrence weights beta of the new degrees);
  * ``trainable_degrees``: zero-initialised deltas on the kernels of chosen pretrained degrees (and, for Gram,
    on the beta of those degrees: beta(i - 1, i) shapes P_i and, through the recurrence, every degree above);
  * ``train_base``: a zero-initialised delta on the base branch's kernel (the bottleneck's own base_weight
    trains directly).
Every added tensor starts at zero, so the wrapped model's outputs equal the pretrained model's exactly: the
layer's own convolution runs the same code on the same tensors and the adapter adds zeros.

Which bases: those whose functions are indexed by degree and extend to a higher one (Basis.extends_by_degree):
gram, chebyshev, legendre, jacobi. Bernstein takes trainable_degrees but no extra degrees: its degree-D
functions are not among the degree-(D + 1) ones, so appended functions would not extend the layer. The grid
bases (bspline, rbf, relu) and the wavelet have no degrees to extend.

Merging adds the deltas into the pretrained kernels and appends the new degrees' kernels: the layer becomes a
plain KAN conv of degree D + E with the same outputs (up to rounding: one convolution instead of two).
"""
from __future__ import annotations

import warnings
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers.bases import Basis
from .layers.bottleneck import BottleneckKANConvNd
from .layers.conv import KANConvNd
from .layers.kernels.dispatch import eager_fast_path
from .layers.kernels.fused import grads_where_needed, swap_parameters
from .layers.helpers import stack_functions

__all__ = ["KANConvAdapter", "wrap_layer", "wrap_model", "merge_layer", "merge", "adapted_layers"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _strip_parameters(basis: Basis) -> Dict[str, torch.Size]:
    """Empties ``basis``'s own parameter slots (the adapter passes it effective tensors for each call, through
    swap_parameters); returns their shapes."""
    shapes = {}
    for name, p in list(basis._parameters.items()):
        if p is not None:
            shapes[name] = p.shape
            basis._parameters[name] = None
    return shapes


class KANConvAdapter(nn.Module):
    """The trainable part of a wrapped KAN conv; the layer calls it as ``layer.adapter(layer, x, u, mask)``.

    Its term is conv([base(x)], F_i for i in trainable_degrees, F_{D+1}..F_{D+E}; weight) with the basis
    functions F of degree D + E evaluated on the layer's own t = prepare(u) * mask. Where the basis has
    per-degree parameters (Gram's beta), F uses the pretrained ones plus the adapter's deltas, and the term
    also carries conv(F_k - F_k(pretrained), pretrained kernel k) for the pretrained degrees k those deltas reach.

    Parameters:
        weight: (C_out, B * C_in / groups, *kernel), zero at wrap time; block b is ``blocks[b]`` ('base' or a
            degree), in the layer's function-major layout.
        basis_deltas.<name>: one value per trained entry of the basis parameter <name> (Gram: beta_weights at
            the trainable degrees >= 2 and the new degrees).
    """

    def __init__(self, layer: KANConvNd, extra_degrees: int = 1, trainable_degrees: Sequence[int] = (),
                 train_base: bool = False) -> None:
        super().__init__()
        basis = layer.basis
        d = basis.degree
        self.degree, self.extra_degrees = d, extra_degrees
        self.trainable_degrees = tuple(sorted(trainable_degrees))
        # The bottleneck's base branch is a conv of its own, outside the basis conv: it trains directly.
        self.train_base = bool(train_base and layer.base_folded)
        self.new_degrees = tuple(range(d + 1, d + extra_degrees + 1))
        self.blocks: Tuple = (("base",) if self.train_base else ()) + self.trainable_degrees + self.new_degrees
        # The basis of degree D + E the adapter evaluates, without parameters of its own. None: the layer's basis
        # as it is (a basis that does not extend has no per-degree parameters either: Bernstein).
        self.basis: Optional[Basis] = basis.with_degree(d + extra_degrees) if basis.extends_by_degree else None
        shapes = _strip_parameters(self.basis) if self.basis is not None else {}
        degrees = self.basis.parameter_degrees() if self.basis is not None else {}
        trained_degrees = set(self.trainable_degrees) | set(self.new_degrees)
        self.basis_deltas = nn.ParameterDict()
        self._shapes: Dict[str, torch.Size] = {}
        lowest_reached = d + 1
        for name, shape in shapes.items():
            self._shapes[name] = shape
            if name not in degrees:
                continue
            of_entry = degrees[name]
            old_len = getattr(basis, name).shape[0]
            carried = [i for i, k in enumerate(of_entry) if i < old_len and (k is None or k <= d)]
            trained = [i for i, k in enumerate(of_entry) if k in trained_degrees]
            self.register_buffer(f"_carried_{name}", torch.tensor(carried, dtype=torch.long), persistent=False)
            if trained:
                self.register_buffer(f"_trained_{name}", torch.tensor(trained, dtype=torch.long), persistent=False)
                like = getattr(basis, name)
                self.basis_deltas[name] = nn.Parameter(like.new_zeros(len(trained)))
                lowest_reached = min([lowest_reached] + [of_entry[i] for i in trained if of_entry[i] <= d])
        # Pretrained degrees whose functions the deltas change: the term corrects their pretrained kernels' share.
        self.reached_degrees = tuple(range(lowest_reached, d + 1))
        per_block = layer.weight.shape[1] // layer.num_functions
        self.weight = nn.Parameter(layer.weight.new_zeros(
            (layer.weight.shape[0], len(self.blocks) * per_block) + tuple(layer.weight.shape[2:])))

    def effective_basis_parameters(self, layer: KANConvNd) -> Dict[str, torch.Tensor]:
        """The parameters of the degree-(D + E) basis: the layer's pretrained values plus the deltas."""
        out = {}
        for name, shape in self._shapes.items():
            value = getattr(layer.basis, name)
            if hasattr(self, f"_carried_{name}"):
                carried = getattr(self, f"_carried_{name}")
                value = value.new_zeros(shape).index_copy(0, carried, value.index_select(0, carried))
            if name in self.basis_deltas:
                value = value.index_add(0, getattr(self, f"_trained_{name}"), self.basis_deltas[name])
            out[name] = value
        return out

    # -- the term: one autograd node in eager mode (_AdapterTerm), plain ops where the compiler, exporters or
    # autocast must see them (the same split as the layer's own fast path)
    def forward(self, layer: KANConvNd, x: Optional[torch.Tensor], u: torch.Tensor,
                mask: Optional[torch.Tensor]) -> torch.Tensor:
        basis = self._basis(layer)
        t = basis.prepare(u)
        if mask is not None:
            t = t * mask
        x = x if self.train_base else None
        params = list(self.effective_basis_parameters(layer).values())
        weight = self._conv_weight(layer)
        if eager_fast_path(u) and layer.numeric_padding is not None:
            return _AdapterTerm.apply(self, layer, not layer.memory_efficient, t, x, weight, *params)
        if layer.memory_efficient and torch.is_grad_enabled():
            return checkpoint(self._plain_term, layer, t, x, weight, *params, use_reentrant=False)
        return self._plain_term(layer, t, x, weight, *params)

    def _basis(self, layer: KANConvNd) -> Basis:
        return self.basis if self.basis is not None else layer.basis

    def _conv_weight(self, layer: KANConvNd) -> torch.Tensor:
        """The adapter's kernels, then (frozen) the pretrained kernels of the degrees the basis deltas reach."""
        if not self.reached_degrees:
            return self.weight
        first = int(layer.base_folded)
        kernels = layer.coefficients()[:, [first + k for k in self.reached_degrees]].detach()
        return torch.cat([self.weight.unflatten(1, (len(self.blocks), -1)), kernels], 1).flatten(1, 2)

    def _plain_term(self, layer: KANConvNd, t: torch.Tensor, x: Optional[torch.Tensor], weight: torch.Tensor,
                    *params: torch.Tensor) -> torch.Tensor:
        basis = self._basis(layer)
        with swap_parameters(basis, dict(zip(self._shapes, params))):
            functions = basis.expand(t)
        pieces = [layer.basis.base(x)] if self.train_base else []
        pieces += [functions[k] for k in self.blocks if k != "base"]
        if self.reached_degrees:
            pretrained = layer.basis.expand(t)
            pieces += [functions[k] - pretrained[k] for k in self.reached_degrees]
        return layer._conv(stack_functions(pieces, layer.groups), weight, layer.groups)

    @torch.no_grad()
    def _stacked(self, layer: KANConvNd, t: torch.Tensor, x: Optional[torch.Tensor],
                 params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The tensor _plain_term convolves, each function written in place (Basis.expand_into)."""
        basis, g = self._basis(layer), layer.groups
        layout = lambda n: (t.shape[0], g, n, t.shape[1] // g) + t.shape[2:]  # noqa: E731
        functions = t.new_empty(layout(basis.num_functions))
        with swap_parameters(basis, dict(zip(self._shapes, params))):
            basis.expand_into(t, functions)
        out = t.new_empty(layout(len(self.blocks) + len(self.reached_degrees)))
        first = int(self.train_base)
        if first:
            out[:, :, 0].copy_(layer.basis.base(x).unflatten(1, (g, -1)))
        for j, k in enumerate(self.blocks[first:], start=first):
            out[:, :, j].copy_(functions[:, :, k])
        if self.reached_degrees:
            pretrained = t.new_empty(layout(layer.basis.num_functions))
            layer.basis.expand_into(t, pretrained)
            for j, k in enumerate(self.reached_degrees, start=len(self.blocks)):
                torch.sub(functions[:, :, k], pretrained[:, :, k], out=out[:, :, j])
        return out.flatten(1, 3)

    def _basis_backward(self, layer: KANConvNd, t: torch.Tensor, x: Optional[torch.Tensor],
                        params: Sequence[torch.Tensor], grad_stacked: torch.Tensor, need_x: bool):
        """(dL/dt, dL/dx, [dL/dparams]) from the gradient of the stacked tensor."""
        basis, g = self._basis(layer), layer.groups
        grads = grad_stacked.unflatten(1, (g, len(self.blocks) + len(self.reached_degrees), -1))
        layout = lambda n: (t.shape[0], g, n, t.shape[1] // g) + t.shape[2:]  # noqa: E731
        grad_functions = t.new_zeros(layout(basis.num_functions))
        first = int(self.train_base)
        for j, k in enumerate(self.blocks[first:], start=first):
            grad_functions[:, :, k] += grads[:, :, j]
        grad_x = None
        if first and need_x:
            with torch.enable_grad():
                xd = x.detach().requires_grad_(True)
                base = layer.basis.base(xd)
                grad_x, = torch.autograd.grad(base, xd, grads[:, :, 0].reshape(base.shape))
        grad_pretrained = t.new_zeros(layout(layer.basis.num_functions)) if self.reached_degrees else None
        for j, k in enumerate(self.reached_degrees, start=len(self.blocks)):
            grad_functions[:, :, k] += grads[:, :, j]
            grad_pretrained[:, :, k] -= grads[:, :, j]
        by_name = dict(zip(self._shapes, params))
        grad_t, param_grads = _expand_backward(basis, t, grad_functions, by_name)
        if grad_pretrained is not None:
            grad_t = grad_t + _expand_backward(layer.basis, t, grad_pretrained, {})[0]
        return grad_t, grad_x, [param_grads.get(name) for name in by_name]

    def extra_repr(self) -> str:
        return (f"degree={self.degree}, extra_degrees={self.extra_degrees}, "
                f"trainable_degrees={self.trainable_degrees}, train_base={self.train_base}")



def _expand_backward(basis: Basis, t: torch.Tensor, grad_functions: torch.Tensor,
                     params: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(dL/dt, {name: dL/dparameter}) through ``basis`` with ``params``: its hand-written adjoint
    (Basis.expand_backward), or autograd over Basis.expand where it has none."""
    with torch.no_grad(), swap_parameters(basis, params):
        result = basis.expand_backward(t, grad_functions)
    if result is not None:
        return result
    with torch.enable_grad():
        td = t.detach().requires_grad_(True)
        pd = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with swap_parameters(basis, pd):
            functions = basis.expand(td)
        outs = [(f, grad_functions[:, :, k].reshape(f.shape)) for k, f in enumerate(functions) if f.requires_grad]
        found = torch.autograd.grad([f for f, _ in outs], [td, *pd.values()], [g for _, g in outs],
                                    allow_unused=True) if outs else [None] * (1 + len(pd))
    grad_t = found[0] if found[0] is not None else torch.zeros_like(t)
    return grad_t, {n: g for n, g in zip(pd, found[1:]) if g is not None}


class _AdapterTerm(torch.autograd.Function):
    """The adapter's term as one node: functions written in place, the basis adjoint by hand, one
    convolution_backward. Keeps t and the stacked tensor (memory-efficient layers: t only, rebuilt in backward)."""

    @staticmethod
    def forward(ctx, adapter, layer, keep, t, x, weight, *params):  # type: ignore[override]
        stacked = adapter._stacked(layer, t, x, params)
        ctx.adapter, ctx.layer = adapter, layer
        ctx.save_for_backward(t, x, weight, stacked if keep else None, *params)
        return layer._conv(stacked, weight, layer.groups)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        t, x, weight, stacked, *params = ctx.saved_tensors
        adapter, layer = ctx.adapter, ctx.layer
        if torch.is_grad_enabled():  # create_graph=True: the same term in plain ops, differentiated by autograd
            y = adapter._plain_term(layer, t, x, weight, *params)
            inputs = [t, x, weight, *params]
            grads = grads_where_needed([y], inputs, [grad_y], ctx.needs_input_grad[3:], create_graph=True)
            return (None, None, None, *grads)
        need_t, need_x, need_w, *need_p = ctx.needs_input_grad[3:]
        need_basis = need_t or need_x or any(need_p)
        if stacked is None:
            stacked = adapter._stacked(layer, t, x, params)
        grad_stacked, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_y, stacked, weight, None, layer.stride, layer.numeric_padding, layer.dilation, False,
            [0] * layer.ndim, layer.groups, [need_basis, need_w, False])
        del stacked
        grad_t = grad_x = None
        grad_params: list = [None] * len(params)
        if need_basis:
            grad_t, grad_x, grad_params = adapter._basis_backward(layer, t, x, params, grad_stacked, need_x)
        return (None, None, None, grad_t if need_t else None, grad_x, grad_w if need_w else None,
                *[g if need else None for g, need in zip(grad_params, need_p)])

def _check_layer(name: str, layer: KANConvNd, extra_degrees: int, trainable_degrees: Sequence[int],
                 train_base: bool) -> None:
    where = f"KAN conv {name!r}" if name else "the KAN conv"
    basis = layer.basis
    if layer.adapter is not None:
        raise ValueError(f"{where} already has a PEFT adapter; kan_zoo.peft.merge() the model before wrapping again")
    if not basis.functions_by_degree:
        raise ValueError(f"{where} uses the {basis.name} basis, whose functions are not indexed by a polynomial "
                         f"degree; kan_zoo.peft fine-tunes gram, chebyshev, legendre, jacobi (and bernstein with "
                         f"extra_degrees=0)")
    if extra_degrees and not basis.extends_by_degree:
        raise ValueError(f"{where} uses the {basis.name} basis, whose degree-{basis.degree} functions are not among "
                         f"those of degree {basis.degree + extra_degrees}, so extra degrees cannot extend it; use "
                         f"extra_degrees=0 with trainable_degrees")
    bad = [k for k in trainable_degrees if not 0 <= k <= basis.degree]
    if bad:
        raise ValueError(f"trainable_degrees {bad} out of range for {where}, of degree {basis.degree} "
                         f"(valid: 0..{basis.degree})")
    if train_base and not layer.has_base:
        raise ValueError(f"train_base=True, but {where} ({basis.name} basis) has no base branch")


def _check_arguments(extra_degrees: int, trainable_degrees: Sequence[int], train_base: bool) -> Tuple[int, ...]:
    if not isinstance(extra_degrees, int) or isinstance(extra_degrees, bool) or extra_degrees < 0:
        raise ValueError(f"extra_degrees must be an int >= 0, got {extra_degrees!r}")
    if isinstance(trainable_degrees, (int, str)):
        raise TypeError(f"trainable_degrees must be a sequence of ints, got {trainable_degrees!r}")
    degrees = tuple(trainable_degrees)
    if any(not isinstance(k, int) or isinstance(k, bool) for k in degrees):
        raise TypeError(f"trainable_degrees must be ints, got {degrees!r}")
    if len(set(degrees)) != len(degrees):
        raise ValueError(f"trainable_degrees has repeated degrees: {degrees!r}")
    if not extra_degrees and not degrees and not train_base:
        raise ValueError("nothing to train: extra_degrees=0, no trainable_degrees and train_base=False")
    return degrees


def wrap_layer(layer: KANConvNd, extra_degrees: int = 1, trainable_degrees: Sequence[int] = (),
               train_base: bool = False) -> KANConvNd:
    """Freezes ``layer``'s own parameters and gives it a zero-initialised :class:`KANConvAdapter`, in place;
    returns ``layer``. Its norm's parameters are frozen too (wrap_model decides about norms for a whole model)."""
    degrees = _check_arguments(extra_degrees, trainable_degrees, train_base)
    _check_layer("", layer, extra_degrees, degrees, train_base)
    _attach(layer, extra_degrees, degrees, train_base)
    return layer


def _attach(layer: KANConvNd, extra_degrees: int, trainable_degrees: Tuple[int, ...], train_base: bool) -> None:
    layer.requires_grad_(False)
    layer.adapter = KANConvAdapter(layer, extra_degrees, trainable_degrees, train_base)
    if train_base and isinstance(layer, BottleneckKANConvNd) and layer.base_weight is not None:
        layer.base_weight.requires_grad_(True)


def _head(model: nn.Module) -> Optional[nn.Module]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return head if isinstance(head, nn.Module) else None


def wrap_model(model: nn.Module, extra_degrees: int = 1, trainable_degrees: Sequence[int] = (),
               train_base: bool = False, *, train_head: bool = True, train_norms: bool = True) -> nn.Module:
    """Wraps every KAN conv of ``model`` for parameter-efficient fine-tuning, in place; returns ``model``.

    Each KAN conv outside the classifier gets a :class:`KANConvAdapter` (see the module docstring) and everything
    else is frozen except:
      * the classifier (timm's ``get_classifier()``, e.g. after ``reset_classifier(n)`` for new classes), unless
        ``train_head=False``: a new task needs a new head, and the head is small;
      * the affine parameters of the norm layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm), unless
        ``train_norms=False``: they are few and follow the new data's statistics, and torch-conv-kan's PEFT
        layers leave their norms trainable too. BatchNorm running statistics follow the data in train mode
        either way.
    The wrapped model starts with exactly the pretrained model's outputs. All checks run before anything changes.
    """
    degrees = _check_arguments(extra_degrees, trainable_degrees, train_base)
    head = _head(model)
    in_head = {id(m) for m in head.modules()} if head is not None else set()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, KANConvNd) and id(m) not in in_head]
    if not layers:
        outside = " outside its classifier" if in_head else ""
        raise ValueError(f"{type(model).__name__} has no KAN convs (kan_zoo.layers.KANConvNd){outside} to wrap")
    for name, layer in layers:
        _check_layer(name, layer, extra_degrees, degrees, train_base)
    model.requires_grad_(False)
    for _, layer in layers:
        _attach(layer, extra_degrees, degrees, train_base)
    if train_norms:
        for m in model.modules():
            if isinstance(m, _NORMS):
                m.requires_grad_(True)
    if train_head and head is not None:
        head.requires_grad_(True)
    return model


def adapted_layers(model: nn.Module) -> Iterator[Tuple[str, KANConvNd]]:
    """(name, layer) of every KAN conv in ``model`` that has a PEFT adapter."""
    for name, m in model.named_modules():
        if isinstance(m, KANConvNd) and m.adapter is not None:
            yield name, m


@torch.no_grad()
def merge_layer(layer: KANConvNd) -> KANConvNd:
    """Folds ``layer``'s adapter into it, in place: a plain, trainable KAN conv of degree D + E with the same
    outputs (one convolution instead of two, so equal up to rounding); returns ``layer``."""
    adapter = layer.adapter
    if not isinstance(adapter, KANConvAdapter):
        raise ValueError("this KAN conv has no PEFT adapter to merge (kan_zoo.peft.wrap_layer / wrap_model)")
    first = int(layer.base_folded)
    if adapter.basis is not None:
        merged_basis = layer.basis.with_degree(adapter.degree + adapter.extra_degrees)
        for name, value in adapter.effective_basis_parameters(layer).items():
            getattr(merged_basis, name).copy_(value)
    else:
        merged_basis = layer.basis
    old = layer.coefficients()
    blocks = old.new_zeros((old.shape[0], first + merged_basis.num_functions) + old.shape[2:])
    blocks[:, : old.shape[1]] = old
    added = adapter.weight.unflatten(1, (len(adapter.blocks), -1))
    for j, k in enumerate(adapter.blocks):
        blocks[:, 0 if k == "base" else first + k] += added[:, j]
    layer.basis = merged_basis
    layer.num_functions = blocks.shape[1]
    layer.weight = nn.Parameter(blocks.flatten(1, 2))
    del layer.adapter
    layer.adapter = None
    layer.requires_grad_(True)
    return layer


def merge(model: nn.Module) -> nn.Module:
    """Merges every adapter of a wrapped ``model`` into its layer, in place, and makes all parameters trainable
    again: a plain kan_zoo model of the higher degree, as timm.create_model(..., degree=D + E) builds it;
    returns ``model``. Its recorded model arguments (timm's ``_model_args``, which exports write to config.json)
    get the new degree, so that kan_zoo.hub exports reload with ``timm.create_model('local-dir:...')``."""
    layers = [layer for _, layer in adapted_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no PEFT adapters to merge (kan_zoo.peft.wrap_model)")
    for layer in layers:
        merge_layer(layer)
    model.requires_grad_(True)
    _record_degree(model)
    return model


def _record_degree(model: nn.Module) -> None:
    args = getattr(model, "_model_args", None)
    if not isinstance(args, dict):
        return
    degrees = sorted({m.basis.degree for m in model.modules() if isinstance(m, KANConvNd)})
    if len(degrees) == 1:
        args["degree"] = degrees[0]
    else:
        warnings.warn(f"the merged model's KAN convs have degrees {degrees}: one `degree` model argument cannot "
                      f"rebuild them, so its exports will not reload with timm.create_model", stacklevel=3)

