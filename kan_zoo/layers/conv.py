"""The KAN convolution core: every basis plugs into this one module, in 1D, 2D and 3D.

A KAN conv over C_in channels with F functions per channel equals an ordinary convolution over
C_in * F "basis channels". So the layer expands its input once (the base branch's activation
counts as one more function), lays the result out group after group, and runs ONE grouped
convolution with a fused weight of shape (C_out, F * C_in / groups, *kernel).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import register_notrace_module
from torch import nn

from .bases import get_basis_class
from .constant_function import constant_response, split_constant
from .helpers import (
    CONV_FNS,
    NormSpec,
    WHOLE,
    batch_chunks,
    check_channels,
    check_input,
    create_activation,
    create_norm,
    match_checkpoint_grid,
    numeric_padding,
    stack_functions,
    take,
    to_tuple,
)
from .kernels import dispatch

__all__ = ["KANConvNd", "KANConv1d", "KANConv2d", "KANConv3d", "DEFAULT_NORM", "set_memory_efficient"]

# Sentinel: "use the basis's own default norm" (InstanceNorm for most, BatchNorm for wavelet).
DEFAULT_NORM = "default"
_IntOrTuple = Union[int, Sequence[int]]


class KANConvNd(nn.Module):
    """Kolmogorov-Arnold convolution: y = act(norm(conv([base(x), B_1(t), ..., B_K(t)], weight))).

    Parameters follow nn.ConvNd; ``basis`` names one of kan_zoo.layers.BASES and ``basis_options``
    go to it (e.g. ``grid_size`` for bspline). ``dropout`` is channel dropout on the basis input t.
    ``memory_efficient=True`` recomputes the basis in backward instead of storing it (about the
    activation memory of a plain conv, for one more pass of elementwise work; same outputs and
    gradients); ``kan_zoo.layers.set_memory_efficient(model)`` flips it on a whole model.

    Parameters:
        weight: (C_out, F * C_in / groups, *kernel); input block f of a group is function f
            (f = 0 is the base branch when the basis has one). ``coefficients()`` views it per function.
        basis.*: the basis's own parameters (e.g. Gram's beta_weights).
        norm.*, act.*: the norm and the output activation.
    """

    ndim: ClassVar[int] = 0
    # Which eager nodes torch.compile calls outside the graph, behind a graph break (docs/performance.md):
    # None (default): only the wavelet's chunked node, whose plain ops would hold its whole wavelet tensor;
    # True: also the separable bases' fused node on the CPU, faster per layer than inductor's code for the
    # grid bases' plain ops but splitting a model into many graphs (slower where Python overhead dominates);
    # False: none, so that fullgraph=True gets one graph of plain ops.
    compile_calls_eager_node: ClassVar[Optional[bool]] = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrTuple,
        stride: _IntOrTuple = 1,
        padding: Union[str, _IntOrTuple] = 0,
        dilation: _IntOrTuple = 1,
        groups: int = 1,
        *,
        basis: str = "gram",
        degree: int = 3,
        norm_layer: NormSpec = DEFAULT_NORM,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **basis_options: Any,
    ) -> None:
        super().__init__()
        n = self.ndim
        self.memory_efficient = bool(memory_efficient)
        check_channels(in_channels, out_channels, groups)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = to_tuple(kernel_size, n, "kernel_size")
        self.stride = to_tuple(stride, n, "stride")
        self.dilation = to_tuple(dilation, n, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a tuple, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: Union[str, Tuple[int, ...]] = padding
        else:
            self.padding = to_tuple(padding, n, "padding")
        # What the fused backward passes to aten.convolution_backward; None where it cannot (even 'same').
        self.numeric_padding = numeric_padding(self.padding, self.kernel_size, self.dilation)

        basis_cls = get_basis_class(basis)
        if not basis_cls.separable:
            basis_options = dict(
                basis_options, out_channels=out_channels, groups=groups, kernel_size=self.kernel_size
            )
        basis_channels, conv_out_channels, fold_base = self._core_shape()
        try:
            self.basis = basis_cls(basis_channels, degree, **basis_options)
        except TypeError as e:
            raise TypeError(f"bad option for basis {basis!r}: {e}") from None
        self.has_base = self.basis.base_activation is not None
        # Where the base branch shares the basis conv, its activation is function 0 of the stack.
        self.base_folded = self.has_base and fold_base
        self.num_functions = (self.basis.num_functions if self.basis.separable else 0) + int(self.base_folded)
        self.weight = nn.Parameter(
            torch.empty(conv_out_channels, self.num_functions * basis_channels // groups, *self.kernel_size)
        )
        self._make_extra_parameters()
        # An adapter (kan_zoo.peft) adds its own term to the basis convolution; None for a plain layer.
        self.adapter: Optional[nn.Module] = None

        if norm_layer == DEFAULT_NORM:
            norm_layer = self.basis.default_norm
        norm_channels = in_channels if self.basis.normalizes_input else out_channels
        self.norm = create_norm(norm_layer, norm_channels, n)
        self.dropout = getattr(nn, f"Dropout{n}d")(dropout) if dropout > 0 else nn.Identity()
        self.act = create_activation(self.basis.output_activation, groups, out_channels)
        self.reset_parameters()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _core_shape(self) -> Tuple[int, int, bool]:
        """(channels the basis expands, output channels of the basis conv, whether the base branch
        folds into that conv). Subclasses with another topology (the bottleneck) override it."""
        return self.in_channels, self.out_channels, True

    def _make_extra_parameters(self) -> None:
        """Hook for subclasses to add parameters before reset_parameters runs."""

    def reset_parameters(self) -> None:
        """Kaiming-uniform (linear gain) per block: the base kernel over its c inputs and the basis
        kernels over their K * c inputs, as the reference initialises its separate convolutions."""
        blocks = self.coefficients()
        fan_kernel = math.prod(self.kernel_size) * blocks.shape[2]
        first = int(self.base_folded)
        with torch.no_grad():
            if first:
                _uniform(blocks[:, 0], fan_kernel)
            if blocks.shape[1] > first:
                _uniform(blocks[:, first:], fan_kernel * (blocks.shape[1] - first))

    def coefficients(self) -> torch.Tensor:
        """The weight viewed as (C_out, F, C_in / groups, *kernel): [:, f] is function f's kernel."""
        return self.weight.unflatten(1, (self.num_functions, -1))

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        return CONV_FNS[self.ndim](x, weight, None, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.ndim, self.in_channels)
        basis_input = self.norm(x) if self.basis.normalizes_input else x
        if self.basis.separable:
            y = self.expand_conv(x if self.base_folded else None, basis_input)
        else:
            t = self.dropout(self.basis.prepare(basis_input))
            y = self._conv(self.basis.base(x), self.weight, self.groups) + dispatch.non_separable_branch(self, t)
        if not self.basis.normalizes_input:
            y = self.norm(y)
        return self.act(y)

    # -- the separable core: conv([base(x), B_1(t), ..., B_K(t)]) with t = prepare(u) * dropout mask
    def dropout_mask(self, u: torch.Tensor) -> Optional[torch.Tensor]:
        """The channel-dropout multiplier for t, shaped (N, C, 1, ...), or None.

        Dropout applied to ones draws the same random numbers as dropout applied to t and gives
        exactly its scaled mask, so t * mask equals dropout(t) while the mask is all a recomputing
        backward needs to keep.
        """
        if not self.training or isinstance(self.dropout, nn.Identity):
            return None
        return self.dropout(u.new_ones(u.shape[:2] + (1,) * self.ndim))

    def basis_functions(
        self, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> List[torch.Tensor]:
        t = self.basis.prepare(u)
        if mask is not None:
            t = t * mask
        functions = self.basis.expand(t)
        return [self.basis.base(x)] + functions if x is not None else functions

    def stacked_basis(self, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return stack_functions(self.basis_functions(x, u, mask), self.groups)

    def stacked_basis_into(
        self, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor], skip_constant: bool = False
    ) -> torch.Tensor:
        """:meth:`stacked_basis` without autograd, each function written straight into the stacked
        tensor (no per-function tensors and no concatenation pass), a piece of the batch at a time so
        that the basis's temporaries stay in cache (helpers.batch_chunks). ``skip_constant`` leaves
        out the basis's constant function (see :meth:`skips_constant`)."""
        g, first = self.groups, int(x is not None)
        functions = self.basis.num_functions - int(skip_constant)
        out = u.new_empty((u.shape[0], g, first + functions, u.shape[1] // g) + u.shape[2:])
        options = {"skip_constant": True} if skip_constant else {}  # only bases with a constant take it
        for chunk in batch_chunks(u) if self.basis.expands_in_pieces(u) else [WHOLE]:
            stack = take(out, chunk, channel_dims=3)  # (n, G, F, C / G, *spatial)
            t = self.basis.prepare(take(u, chunk))
            if mask is not None:
                t = t * mask[chunk[0]]
            if x is not None:
                if self.basis.base_activation == "silu":
                    torch.ops.aten.silu.out(take(x, chunk).unflatten(1, (g, -1)), out=stack[:, :, 0])
                else:
                    stack[:, :, 0].copy_(self.basis.base(take(x, chunk)).unflatten(1, (g, -1)))
            self.basis.expand_into(t, stack[:, :, first:], **options)
        return out.flatten(1, 3)

    # -- the constant function (P_0 = 1): the fast paths leave it out of the stacked tensor and add its
    # share of the convolution in closed form (kan_zoo.layers.constant_function)
    def skips_constant(self, x: Optional[torch.Tensor]) -> bool:
        """Whether the fast paths leave the basis's constant function out (something must remain)."""
        return self.basis.has_constant_function and (x is not None or self.basis.num_functions > 1)

    def conv_expanded(self, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor],
                      weight: torch.Tensor, keep: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the layer's basis convolution, the stacked tensor it ran on, or None unless ``keep``) without
        autograd; the constant function, where the basis has one, in closed form."""
        skip = self.skips_constant(x)
        stacked = self.stacked_basis_into(x, u, mask, skip_constant=skip)
        y = self._conv_without_constant(stacked, weight, u) if skip else self._conv(stacked, weight, self.groups)
        return y, stacked if keep else None

    def _conv_without_constant(self, stacked: torch.Tensor, weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The convolution of a stacked tensor that leaves the constant function out, plus that function's
        share in closed form (in place on the conv's output, which its backward does not read)."""
        rest, summed = split_constant(self, weight)
        return self._conv(stacked, rest, self.groups).add_(constant_response(self, summed, u))

    def expand_conv(self, x: Optional[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        """conv(stacked basis of (x, u), weight): one fused autograd node where it applies (the paths:
        kan_zoo.layers.kernels)."""
        return dispatch.expand_conv(self, x, u)

    def expand_conv_plain(
        self, x: Optional[torch.Tensor], u: torch.Tensor, mask: Optional[torch.Tensor], skip_constant: bool = False
    ) -> torch.Tensor:
        """:meth:`expand_conv` in plain differentiable ops; with ``skip_constant`` the constant function's block
        is left out of the stack and added in closed form."""
        if skip_constant:
            functions = self.basis_functions(x, u, mask)
            del functions[int(x is not None)]
            return self._conv_without_constant(stack_functions(functions, self.groups), self.weight, u)
        return self._conv(self.stacked_basis(x, u, mask), self.weight, self.groups)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint written after grid growth has another grid size than this architecture's.
        match_checkpoint_grid(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self.ndim:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self.ndim:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s


def _uniform(tensor: torch.Tensor, fan_in: int) -> None:
    bound = math.sqrt(3.0 / fan_in)
    tensor.uniform_(-bound, bound)


def set_memory_efficient(model: nn.Module, enabled: bool = True) -> int:
    """Switch memory-efficient mode on (or off) for every KAN layer in ``model``; returns how many.

    In that mode a layer recomputes its basis in backward instead of storing it, so it keeps about
    the activations of a plain conv + norm + activation, for roughly one more pass of elementwise work.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, KANConvNd):
            module.memory_efficient = bool(enabled)
            count += 1
    return count


@register_notrace_module
class KANConv1d(KANConvNd):
    ndim = 1


@register_notrace_module
class KANConv2d(KANConvNd):
    ndim = 2


@register_notrace_module
class KANConv3d(KANConvNd):
    ndim = 3
