"""kan_zoo: Kolmogorov-Arnold convolutional networks as a timm plugin.

Importing the package registers every kan_* model in timm's registry.
"""
from . import layers, models
from .cpu_memory import reuse_cpu_memory
from .layers import BASES

__version__ = "0.1.0"
__all__ = ["layers", "models", "BASES", "reuse_cpu_memory", "__version__"]
