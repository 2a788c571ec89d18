"""Let CPU training reuse freed tensor memory instead of faulting fresh pages in every step.

Why: PyTorch's CPU allocator takes every tensor from glibc malloc, which serves large blocks with
fresh mmap'd pages (above a threshold that adapts up to 32 MiB) and hands freed memory at the top of
its heap back to the OS (above a trim threshold). So each training step pays again for the first
touch of its large activations: the kernel faults in and zeroes every 4 KiB page. KAN convs feel it
most, their stacked basis tensor and its gradient being (basis size + 1) times a plain conv's
activations: the benchmark layer (gram degree 3, N=8, 64 channels, 56x56) took ~15,000 page faults
per training step, 0 with this switch, and its step went from ~185 to ~160 ms on 2 cores.

The switch raises both glibc thresholds (mallopt), which is what the environment variables
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ do when set before Python starts. It is
process-wide and one-way, so kan_zoo never flips it on import; its CPU entry points (the demo,
train_imagenet.py on CPU, the benchmarks' --reuse-cpu-memory) call it. The price is the same as the
CUDA caching allocator's: the process keeps its peak heap rather than returning freed memory to the
OS. Elsewhere than Linux with glibc it does nothing and returns False.
"""
from __future__ import annotations

import ctypes
import platform
import sys
from typing import Optional

__all__ = ["reuse_cpu_memory"]

# mallopt parameters (malloc.h) and the bounds glibc accepts for them.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
# The largest mmap threshold every glibc accepts (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); newer
# releases take more.
_PORTABLE_MMAP_THRESHOLD = 32 << 20


def _mallopt() -> Optional[ctypes._CFuncPtr]:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def reuse_cpu_memory(max_block_bytes: int = 1 << 30) -> bool:
    """Make malloc keep freed CPU memory and serve blocks up to ``max_block_bytes`` from it.

    Returns True when glibc accepted the settings (for the rest of the process), False where the
    C library is not glibc. A glibc that refuses a threshold above 32 MiB gets 32 MiB.
    """
    if not isinstance(max_block_bytes, int) or not 0 < max_block_bytes <= _INT_MAX:
        raise ValueError(f"max_block_bytes must be an int in (0, {_INT_MAX}], got {max_block_bytes!r}")
    mallopt = _mallopt()
    if mallopt is None:
        return False
    threshold_set = bool(mallopt(_M_MMAP_THRESHOLD, max_block_bytes)) or bool(
        mallopt(_M_MMAP_THRESHOLD, min(max_block_bytes, _PORTABLE_MMAP_THRESHOLD))
    )
    return threshold_set and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
