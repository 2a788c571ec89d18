"""Argument handling shared by the KAN layers: tuples, norms, activations, input checks."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

NormSpec = Union[str, None, Callable[[int], nn.Module]]
NORM_NAMES = ("batch", "instance", "instance_affine", "none")


def to_tuple(value: Union[int, Sequence[int]], ndim: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * ndim
    value = tuple(value)
    if len(value) != ndim or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")
    return value


def numeric_padding(padding, kernel_size: Sequence[int], dilation: Sequence[int]) -> Optional[Tuple[int, ...]]:
    """The symmetric per-dimension padding a padding spec means, or None for asymmetric 'same'."""
    if padding == "valid":
        return (0,) * len(kernel_size)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return tuple(padding)


def check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if in_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")


def create_norm(norm_layer: NormSpec, num_features: int, ndim: int) -> nn.Module:
    """A norm over ``num_features`` channels from a name in NORM_NAMES, None, or a callable(num_features)."""
    if norm_layer is None or norm_layer == "none":
        return nn.Identity()
    if isinstance(norm_layer, str):
        if norm_layer == "batch":
            return getattr(nn, f"BatchNorm{ndim}d")(num_features)
        if norm_layer in ("instance", "instance_affine"):
            return getattr(nn, f"InstanceNorm{ndim}d")(num_features, affine=norm_layer == "instance_affine")
        raise ValueError(f"unknown norm_layer {norm_layer!r}; use one of {NORM_NAMES} or a norm class")
    if callable(norm_layer):
        return norm_layer(num_features)
    raise TypeError(f"norm_layer must be a name in {NORM_NAMES}, None or a callable, got {type(norm_layer).__name__}")


class GroupPReLU(nn.Module):
    """PReLU with one learnable slope per group of output channels (the B-spline layer's activation)."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.channels_per_group = channels // groups
        self.weight = nn.Parameter(torch.full((groups,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.prelu(x, self.weight.repeat_interleave(self.channels_per_group))


def create_activation(name: str, groups: int, channels: int) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "identity":
        return nn.Identity()
    if name == "prelu_per_group":
        return GroupPReLU(groups, channels)
    raise ValueError(f"unknown activation {name!r}")


def stack_functions(functions: List[torch.Tensor], groups: int) -> torch.Tensor:
    """F tensors (N, C, *spatial) -> one (N, G * F * c, *spatial) tensor, function-major inside each group.

    Group g holds channels [g * F * c, (g + 1) * F * c): function 0 of its c inputs, then function 1,
    and so on, so one grouped convolution over the result applies every function's kernel at once.
    """
    parts = [f.unflatten(1, (groups, -1)) for f in functions]
    return torch.stack(parts, dim=2).flatten(1, 3)


# Elements of one chunk of the CPU fast path's elementwise work (kan_zoo.layers.conv/fused): a basis
# keeps several input-sized temporaries alive (bspline: its knot differences and a level of the
# Cox-de Boor triangle), which outgrow the cache on a whole batch. One 64-channel 56x56 sample per
# chunk: bspline's expansion 77 -> 27 ms and its backward 52 -> 19 ms at batch 8 on 2 cores.
CHUNK_ELEMENTS = 1 << 18

# A chunk: (batch slice, slice of the first spatial dimension).
Chunk = Tuple[slice, slice]
WHOLE: Chunk = (slice(None), slice(None))


def batch_chunks(x: torch.Tensor, budget: Optional[int] = None) -> List[Chunk]:
    """Pieces of x (N, C, *spatial) with about ``budget`` (default CHUNK_ELEMENTS) elements each:
    whole samples while they fit, else rows of the first spatial dimension of one sample. CPU only:
    on a GPU pieces would only multiply kernel launches."""
    budget = CHUNK_ELEMENTS if budget is None else budget
    everything = slice(None)
    if x.device.type != "cpu" or x.shape[0] == 0 or x.numel() <= budget:
        return [WHOLE]
    per_sample = x[0].numel()
    if per_sample <= budget or x.dim() < 3:
        rows = max(1, budget // max(1, per_sample))
        return [(slice(n, n + rows), everything) for n in range(0, x.shape[0], rows)]
    size = x.shape[2]
    step = max(1, budget // max(1, per_sample // size))
    return [(slice(n, n + 1), slice(h, h + step)) for n in range(x.shape[0]) for h in range(0, size, step)]


def take(x: torch.Tensor, chunk: Chunk, channel_dims: int = 1) -> torch.Tensor:
    """The view of x (N, <channel_dims dims>, *spatial) that ``chunk`` covers."""
    rows = () if chunk[1] == slice(None) else (chunk[1],)
    return x[(chunk[0],) + (slice(None),) * channel_dims + rows]


def check_input(layer: nn.Module, x: torch.Tensor, ndim: int, in_channels: int) -> None:
    if x.ndim != ndim + 2:
        dims = ("N", "C") + ("D", "H", "W")[3 - ndim :]
        raise ValueError(
            f"{type(layer).__name__} expects a {ndim + 2}-D input {tuple(dims)}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{type(layer).__name__} was built for {in_channels} input channels, got an input with "
            f"{x.shape[1]} channels (shape {tuple(x.shape)})"
        )


CONV_FNS = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}


def match_checkpoint_grid(layer: nn.Module, state_dict: dict, prefix: str) -> None:
    """Load pre-step of KANConvNd / KANActivation: resize a grid basis to a checkpoint's grid size.

    Grid growth (kan_zoo.grid) gives a layer more grid cells than its architecture's default, and
    timm rebuilds the default before loading the weights. When the checkpoint's basis entries and
    weight have exactly the shapes of this layer at the checkpoint's grid size, the basis is
    rebuilt at that size and ``weight`` replaced by a Parameter of the new shape (values come from
    the load). Anything else (other channels, kernel, degree) is left for the ordinary shape check
    to report, and the layer stays as it was.
    """
    basis = layer.basis
    size = basis.checkpoint_grid_size(state_dict, prefix + "basis.")
    if size is None or size == getattr(basis, "grid_size", size):
        return
    try:
        new_basis = basis.resized(size)
    except ValueError:  # e.g. a size the basis does not accept: the shape check reports it
        return
    expected = {prefix + "basis." + k: tuple(v.shape) for k, v in new_basis.state_dict().items()}
    old_functions = layer.num_functions
    num_functions = int(layer.base_folded) + new_basis.num_functions
    weight = layer.weight
    per_function = weight.shape[1] // old_functions  # basis channels per group (1 for KANActivation)
    expected[prefix + "weight"] = (weight.shape[0], num_functions * per_function) + tuple(weight.shape[2:])
    for key, shape in expected.items():
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and tuple(value.shape) != shape:
            return
    layer.basis = new_basis
    layer.num_functions = num_functions
    # A new Parameter: an optimizer built before this load would hold the old one, as after a grow.
    layer.weight = nn.Parameter(weight.new_zeros(expected[prefix + "weight"]), requires_grad=weight.requires_grad)
