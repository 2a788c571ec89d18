"""KAN layers: convolutions over any basis in 1D/2D/3D, their bottleneck form, and KANLinear."""
from .activation import KANActivation
from .attention import (KANFocalModulation1d, KANFocalModulation2d, KANFocalModulation3d, KANFocalModulationNd,
                        KANSelfAttention1d, KANSelfAttention2d, KANSelfAttention3d, KANSelfAttentionNd,
                        RotaryEmbedding)
from .bases import BASES, Basis, get_basis_class, register_basis
from .bottleneck import BottleneckKANConv1d, BottleneckKANConv2d, BottleneckKANConv3d, BottleneckKANConvNd
from .cpu_kernels import cpu_kernels_enabled, set_cpu_kernels_enabled
from .conv import KANConv1d, KANConv2d, KANConv3d, KANConvNd
from .fused import set_memory_efficient
from .helpers import GroupPReLU
from .linear import KANLinear
from .moe import MoEKANConv1d, MoEKANConv2d, MoEKANConv3d, MoEKANConvNd, moe_aux_loss
from .native_kernels import native_kernels_enabled, set_native_kernels_enabled
from .triton_basis import set_triton_enabled, triton_enabled

__all__ = [
    "BASES", "Basis", "get_basis_class", "register_basis", "KANConvNd", "KANConv1d", "KANConv2d", "KANConv3d",
    "BottleneckKANConvNd", "BottleneckKANConv1d", "BottleneckKANConv2d", "BottleneckKANConv3d", "KANLinear",
    "GroupPReLU", "set_memory_efficient", "KANActivation", "set_triton_enabled", "triton_enabled",
    "set_cpu_kernels_enabled", "cpu_kernels_enabled", "set_native_kernels_enabled", "native_kernels_enabled",
    "MoEKANConvNd", "MoEKANConv1d", "MoEKANConv2d", "MoEKANConv3d", "moe_aux_loss",
    "KANSelfAttentionNd", "KANSelfAttention1d", "KANSelfAttention2d", "KANSelfAttention3d", "RotaryEmbedding",
    "KANFocalModulationNd", "KANFocalModulation1d", "KANFocalModulation2d", "KANFocalModulation3d",
]
