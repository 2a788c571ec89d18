"""KAN layers: convolutions over any basis in 1D/2D/3D, their bottleneck form, and KANLinear.

The core (conv, bottleneck, linear, activation) and the bases (bases/) say what a layer computes; the ways of
running it fast live in kernels/, whose docstring says which runs when."""
from .activation import KANActivation
from .bases import BASES, Basis, get_basis_class, register_basis
from .bottleneck import BottleneckKANConv1d, BottleneckKANConv2d, BottleneckKANConv3d, BottleneckKANConvNd
from .conv import KANConv1d, KANConv2d, KANConv3d, KANConvNd, set_memory_efficient
from .helpers import GroupPReLU
from .kernels.switches import (
    cpu_kernels_enabled,
    native_kernels_enabled,
    set_cpu_kernels_enabled,
    set_native_kernels_enabled,
    set_triton_enabled,
    triton_enabled,
)
from .linear import KANLinear

__all__ = [
    "BASES", "Basis", "get_basis_class", "register_basis", "KANConvNd", "KANConv1d", "KANConv2d", "KANConv3d",
    "BottleneckKANConvNd", "BottleneckKANConv1d", "BottleneckKANConv2d", "BottleneckKANConv3d", "KANLinear",
    "GroupPReLU", "set_memory_efficient", "KANActivation", "set_triton_enabled", "triton_enabled",
    "set_cpu_kernels_enabled", "cpu_kernels_enabled", "set_native_kernels_enabled", "native_kernels_enabled",
]
