"""The on/off switches of the three kernel families, one mechanism for all.

family        setter / getter (kan_zoo.layers)                     environment (read at import)   default
------------  ---------------------------------------------------  -----------------------------  -------
C kernels     set_native_kernels_enabled / native_kernels_enabled  KAN_ZOO_NATIVE_KERNELS=0: off  on
compiled CPU  set_cpu_kernels_enabled / cpu_kernels_enabled        KAN_ZOO_CPU_KERNELS=1: on      off
Triton        set_triton_enabled / triton_enabled                  KAN_ZOO_TRITON=0: off          on

A switch only allows a family: each path still checks where it applies (kan_zoo.layers.kernels). The setters
return the previous setting, so that code can put it back. KAN_ZOO_TRITON=all also lets the Triton kernels not
yet run on a GPU take CUDA tensors; that is read at each call (kan_zoo.layers.kernels.triton_basis).
"""
from __future__ import annotations

import os

__all__ = ["KernelSwitch", "NATIVE_KERNELS", "CPU_KERNELS", "TRITON", "set_native_kernels_enabled",
           "native_kernels_enabled", "set_cpu_kernels_enabled", "cpu_kernels_enabled", "set_triton_enabled",
           "triton_enabled"]


class KernelSwitch:
    """One family's process-wide setting, ``enabled``, which starts from the environment variable ``variable``:
    a family on by default is off only where it is "0", one off by default is on only where it is "1"."""

    def __init__(self, variable: str, default: bool) -> None:
        self.variable = variable
        value = os.environ.get(variable)
        self.enabled = default if value is None else (value != "0" if default else value == "1")

    def set(self, enabled: bool = True) -> bool:
        """Sets the switch; returns the previous setting."""
        previous, self.enabled = self.enabled, bool(enabled)
        return previous

    def __repr__(self) -> str:
        return f"KernelSwitch({self.variable!r}, enabled={self.enabled})"


NATIVE_KERNELS = KernelSwitch("KAN_ZOO_NATIVE_KERNELS", default=True)
CPU_KERNELS = KernelSwitch("KAN_ZOO_CPU_KERNELS", default=False)
TRITON = KernelSwitch("KAN_ZOO_TRITON", default=True)


def set_native_kernels_enabled(enabled: bool = True) -> bool:
    """Turn the C basis kernels on or off for every layer; returns the previous setting."""
    return NATIVE_KERNELS.set(enabled)


def native_kernels_enabled() -> bool:
    """Whether layers may use the C kernels (each basis still decides where they apply)."""
    return NATIVE_KERNELS.enabled


def set_cpu_kernels_enabled(enabled: bool = True) -> bool:
    """Turn the compiled CPU basis kernels on or off for every layer; returns the previous setting."""
    return CPU_KERNELS.set(enabled)


def cpu_kernels_enabled() -> bool:
    """Whether layers may use the compiled CPU kernels (each basis still decides where they apply)."""
    return CPU_KERNELS.enabled


def set_triton_enabled(enabled: bool = True) -> bool:
    """Turn the Triton basis kernels on or off for every layer; returns the previous setting."""
    return TRITON.set(enabled)


def triton_enabled() -> bool:
    """Whether layers may use the Triton kernels (they still need CUDA, triton and a supported basis)."""
    return TRITON.enabled
