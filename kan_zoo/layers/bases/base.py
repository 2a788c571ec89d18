"""The interface every basis implements, and the registry that names them.

A basis turns each input channel into ``num_functions`` channels (the univariate functions
B_i of the Kolmogorov-Arnold expansion). The KAN conv core (``kan_zoo.layers.conv``) stacks
them, together with the base branch, into one tensor and runs one grouped convolution, so a
basis only describes its math; it never convolves.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.weak import WeakIdKeyDictionary

from ..kernels import native_kernels

__all__ = ["Basis", "BASES", "register_basis", "get_basis_class", "state_shape", "ones_as"]

# Name -> Basis subclass. Filled by @register_basis as each basis module is imported.
BASES: Dict[str, Type["Basis"]] = {}


def ones_as(t: torch.Tensor) -> torch.Tensor:
    """Ones shaped like ``t`` (the constant function P_0), as a broadcast view of one number. Under
    torch.jit.trace (the legacy ONNX exporter's) it stays an expand to t's shape; ones_like became a
    constant of the traced shape there, which baked the example's batch size into the graph."""
    return t.new_ones(()).expand_as(t)


def register_basis(cls: Type["Basis"]) -> Type["Basis"]:
    """Class decorator that adds a basis to :data:`BASES` under ``cls.name``."""
    if not cls.name or cls.name in BASES:
        raise ValueError(f"basis name {cls.name!r} is empty or already registered")
    BASES[cls.name] = cls
    return cls


def get_basis_class(name: str) -> Type["Basis"]:
    if not isinstance(name, str):
        raise TypeError(f"basis must be a string naming one of {sorted(BASES)}, got {type(name).__name__}")
    try:
        return BASES[name]
    except KeyError:
        raise ValueError(f"unknown basis {name!r}; valid bases are: {', '.join(BASES)}") from None


# buffer -> ((version, dtype), its values as floats): see Basis.host_values.
# Keyed by identity: a plain WeakKeyDictionary would compare tensors with ==, which is elementwise.
_HOST_VALUES = WeakIdKeyDictionary()

_ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "identity": lambda x: x,
}


class Basis(nn.Module):
    """One family of univariate functions, applied elementwise to a (N, C, *spatial) tensor.

    Subclasses set the class attributes below and implement :meth:`expand`.

    Class attributes:
        name: registry name.
        base_activation: activation of the base branch input ("silu", "gelu", "identity"), or
            None for a basis without a base branch (chebyshev).
        output_activation: activation after the norm ("silu", "identity" or "prelu_per_group").
        default_norm: the norm a layer gets when the caller does not choose one.
        normalizes_input: True where the layer's norm runs over the INPUT channels and feeds the
            basis (rbf), instead of over the output.
        separable: False where the basis depends on the output channel (wavelet); such a basis
            owns its weights and implements :meth:`convolve` instead of :meth:`expand`.
    """

    name: ClassVar[str] = ""
    base_activation: ClassVar[Optional[str]] = "silu"
    output_activation: ClassVar[str] = "silu"
    default_norm: ClassVar[Optional[str]] = "instance"
    normalizes_input: ClassVar[bool] = False
    separable: ClassVar[bool] = True
    # Buffers added after checkpoints without them were written (rbf inv_width, relu scale); see
    # _load_from_state_dict.
    added_buffers: ClassVar[Tuple[str, ...]] = ()
    # Where function 0 is one constant everywhere (P_0 = 1 of the polynomial bases): the fused node then
    # leaves it out of the stacked tensor and adds its convolution in closed form (constant_value).
    has_constant_function: ClassVar[bool] = False
    # Where expand_backward can use the forward's function values (``functions``) instead of recomputing
    # them: the fused node passes them when it kept the stacked tensor (default mode).
    backward_reads_functions: ClassVar[bool] = False
    # Where the fast paths have C kernels: csrc/<native_library>.c (kan_zoo.layers.kernels.native_kernels builds
    # it, kan_zoo.layers.kernels.native_ops calls it).
    native_library: ClassVar[Optional[str]] = None
    # Where function i is the one of polynomial degree i (P_i, or Bernstein's B_{i,D}), so that a degree names
    # one function (kan_zoo.peft's trainable_degrees).
    functions_by_degree: ClassVar[bool] = False
    # Where the functions of degree D are, value for value, the first D + 1 functions of every higher degree
    # (given the same parameters where both have them), so that higher degrees extend a layer (kan_zoo.peft).
    extends_by_degree: ClassVar[bool] = False

    def __init__(self, channels: int, degree: int) -> None:
        super().__init__()
        if not isinstance(degree, int) or isinstance(degree, bool):
            raise TypeError(f"degree must be an int, got {type(degree).__name__}")
        if degree < 0:
            raise ValueError(f"degree must be >= 0, got {degree}")
        self.channels = channels
        self.degree = degree

    @property
    def num_functions(self) -> int:
        """Functions per input channel (not counting the base branch)."""
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Maps raw input into the basis domain (e.g. tanh); dropout is applied after this."""
        return x

    def expand(self, t: torch.Tensor) -> List[torch.Tensor]:
        """Returns ``num_functions`` tensors shaped like ``t``, one per basis function."""
        raise NotImplementedError

    def base(self, x: torch.Tensor) -> torch.Tensor:
        return _ACTIVATIONS[self.base_activation](x)

    # -- optional fast paths for the fused expand+conv node (kan_zoo.layers.kernels.fused); never under autograd
    def constant_value(self, dtype: torch.dtype) -> float:
        """Function 0's value, rounded as :meth:`expand` computes it in ``dtype`` (has_constant_function only)."""
        raise NotImplementedError(f"the {self.name} basis has no constant function")

    def expand_into(self, t: torch.Tensor, out: torch.Tensor, skip_constant: bool = False) -> None:
        """Writes the functions of t (N, C, *spatial) into ``out`` (N, G, num_functions, C / G, *spatial),
        the layer's stacked layout; with ``skip_constant`` (has_constant_function only), ``out`` holds
        functions 1.. only. Override to write each function in place instead of copying it."""
        functions = self.expand(t)[int(skip_constant):]
        for k, function in enumerate(functions):
            out[:, :, k].copy_(function.unflatten(1, (out.shape[1], -1)))

    def expands_in_pieces(self, t: torch.Tensor) -> bool:
        """Whether the fast paths should run expand_into / expand_backward on ``t`` a piece of the batch at
        a time (helpers.batch_chunks: eager temporaries stay in cache); False where the basis runs a
        C kernel that tiles the input itself (kan_zoo.layers.kernels.native_kernels)."""
        return not self.runs_native_kernels(t)

    def runs_native_kernels(self, t: torch.Tensor) -> bool:
        """Whether the fast paths run the basis's C kernels (kan_zoo.layers.kernels.native_ops) on t: the basis has
        them, they are on and built, and t is a plain float CPU tensor."""
        return (self.native_library is not None and native_kernels.native_kernels_apply(t)
                and native_kernels.kernel(self.native_library, f"{self.native_library}_expand", t.dtype) is not None)

    def expand_backward(
        self, t: torch.Tensor, grad_out: torch.Tensor, skip_constant: bool = False
    ) -> Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        """(dL/dt, {parameter name: dL/dparameter}) given dL/d(functions) laid out like ``out`` of
        :meth:`expand_into` (the same ``skip_constant``), or None to let the fused node differentiate
        :meth:`expand` by autograd."""
        return None

    # -- grid-based bases (bspline, rbf, relu): resizing to a checkpoint written after grid growth
    def checkpoint_grid_size(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
        """The grid size the basis entries of ``state_dict`` (keys ``prefix`` + name) were saved with,
        or None where the basis has no grid or the entries do not say."""
        return None

    def resized(self, grid_size: int) -> "Basis":
        """A new basis of this kind, options, device and dtype with ``grid_size`` cells (values at init)."""
        raise NotImplementedError(f"the {self.name} basis has no grid to resize")

    # -- bases that extend to a higher degree (extends_by_degree): kan_zoo.peft appends degrees to a layer
    def with_degree(self, degree: int) -> "Basis":
        """A new basis of this kind, options, device and dtype with ``degree`` (parameters at their init values)."""
        raise NotImplementedError(f"the {self.name} basis does not extend to another degree")

    def parameter_degrees(self) -> Dict[str, Tuple[Optional[int], ...]]:
        """For each parameter whose entries (along dim 0) belong to single degrees: the degree of each entry,
        None where no function uses it. An entry of degree i shapes function i and, through the recurrence,
        those above it, never those below. The same index means the same entry at every degree. Parameters
        not listed apply to all functions alike."""
        return {}

    def _like(self, new: "Basis") -> "Basis":
        """``new`` moved to this basis's device and floating dtype (as built where this basis holds no tensors)."""
        ref = next(iter(self.buffers()), None)
        if ref is None:
            ref = next(self.parameters(), None)
        if ref is None:
            return new
        return new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before ``added_buffers`` existed (and converted reference weights
        # without a target) lack them; they were loaded into the constructor's value then, so keep it.
        # Only when the checkpoint has this basis at all, so a missing basis still fails strict loading.
        if self.added_buffers and any(k.startswith(prefix) for k in state_dict):
            for name in self.added_buffers:
                state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def host_values(self, name: str, dtype: torch.dtype) -> List[float]:
        """The buffer ``name`` rounded to ``dtype``, as Python floats for the in-place fast paths.

        Reading a CUDA tensor on the host waits for the device, so the values are kept until the
        buffer changes: the cache is keyed weakly by the buffer tensor itself (a new tensor, e.g.
        after .to() or a reassignment, misses; a dropped one leaves the cache) and checks its version
        counter (in-place updates such as grid refits and load_state_dict bump it). Floats, not
        tensors, are kept, and nothing is stored on the module (it pickles and deep-copies as before).
        """
        buffer = getattr(self, name)
        key = (buffer._version, dtype)
        hit = _HOST_VALUES.get(buffer)
        if hit is None or hit[0] != key:
            hit = _HOST_VALUES[buffer] = (key, buffer.detach().to(dtype).reshape(-1).tolist())
        return hit[1]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, degree={self.degree}, num_functions={self.num_functions}"


def state_shape(state_dict: Dict[str, Any], key: str) -> Optional[Tuple[int, ...]]:
    """Shape of ``state_dict[key]`` when it is a tensor, else None."""
    value = state_dict.get(key)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def channel_view(param: torch.Tensor, ndim_spatial: int) -> torch.Tensor:
    """(C, ...) parameter -> (C, ..., 1, 1) so it broadcasts against (N, C, *spatial)."""
    return param.reshape(param.shape + (1,) * ndim_spatial)
