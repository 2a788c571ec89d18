"""Hand-written C kernels for basis expansions on the CPU, built on first use with the system's C compiler.

Why: the eager CPU fast path (Basis.expand_into / expand_backward, the wavelet node's chunks) makes one
pass over memory per elementwise op, tens of them per layer; a C loop runs all of a basis's steps on a
small tile of the input that stays in L1 and writes each function once (bspline at 64 channels, 56x56,
batch 8 on 2 cores: expansion 16.9 -> 4.1 ms, its backward 17.8 -> 4.5 ms). Sources: ``csrc/``.
Unlike the opt-in torch.compile kernels (kan_zoo.layers.kernels.cpu_kernels) there are no torch headers to
compile against: building one source takes about half a second, once per machine, and the library is
cached on disk.

On by default where a C compiler is found (``$CC``, else ``cc`` or ``gcc`` on PATH); off with
``kan_zoo.layers.set_native_kernels_enabled(False)`` or ``KAN_ZOO_NATIVE_KERNELS=0`` (.switches). Without
a compiler the layers keep the eager path silently; a build or load that fails warns once and does the
same. The eager path stays the reference: tests compare the two.

Cache: ``$KAN_ZOO_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/kan_zoo/kernels`` (``~/.cache/...``). Each
library's file name carries a hash of its source, the compiler, the flags and the CPU's feature flags
(the code is built for the host CPU), and is written atomically, so processes that build at the same
time, or share the directory across machines, never load a half-written or foreign library.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from .switches import NATIVE_KERNELS

__all__ = ["native_kernels_apply", "kernel", "call", "block_strides", "blocked", "threads"]

_log = logging.getLogger(__name__)

# -fopenmp: the loops run on torch's thread count, in the OpenMP runtime torch already loaded (libgomp.so.1).
# Where the compiler refuses a flag, the next set: without -march=native, then also without OpenMP
# (single-threaded, still one pass).
_FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared")
_FLAG_SETS = (_FLAGS + ("-march=native", "-fopenmp"), _FLAGS + ("-fopenmp",), _FLAGS)
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
# Compiled in front of every library's source (shared static inline functions; part of the cache key).
_SHARED_HEADER = "vector_math.h"
# library name -> loaded library, or None where it cannot be built (no compiler, a failed build).
_LIBRARIES: Dict[str, Optional[ctypes.CDLL]] = {}


def native_kernels_apply(t: torch.Tensor) -> bool:
    """Whether a kernel may run on ``t``: enabled, a plain (not fake, not traced) float32/float64 CPU tensor;
    not under torch.compile or torch.jit.trace, whose graphs cannot hold a call through ctypes."""
    return (NATIVE_KERNELS.enabled and type(t) is torch.Tensor and t.device.type == "cpu" and t.dtype in _SUFFIX
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


def kernel(library: str, name: str, dtype: torch.dtype) -> Optional[ctypes._CFuncPtr]:
    """The C function ``<name>_<f32|f64>`` of ``csrc/<library>.c`` (built after ``csrc/vector_math.h`` and
    loaded on first use), or None where it cannot be had. Every argument is a pointer or an int64."""
    lib = _LIBRARIES.get(library, False)
    if lib is False:
        lib = _LIBRARIES[library] = _load(library)
    if lib is None:
        return None
    function = getattr(lib, f"{name}_{_SUFFIX[dtype]}")
    function.restype = ctypes.c_int
    return function


def call(function: ctypes._CFuncPtr, *args: object) -> None:
    """``function(*args)`` with tensors passed as data pointers and ints as int64 (ctypes releases the GIL);
    a nonzero return (a failed allocation inside the kernel) raises MemoryError."""
    converted = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int64(a) for a in args]
    if function(*converted):
        raise MemoryError(f"{function.__name__}: out of memory for its scratch")


def block_strides(x: torch.Tensor, leading: int) -> Optional[Tuple[int, ...]]:
    """The strides of x's first ``leading`` dimensions where every block x[i0, ..., i_leading-1] is one
    contiguous run of memory (the layout the kernels address), else None."""
    expected = 1
    for size, stride in zip(reversed(x.shape[leading:]), reversed(x.stride()[leading:])):
        if size != 1 and stride != expected:
            return None
        expected *= size
    return tuple(x.stride()[:leading])


def blocked(x: torch.Tensor, leading: int) -> torch.Tensor:
    """x itself where :func:`block_strides` finds its blocks contiguous, else a contiguous copy."""
    return x if block_strides(x, leading) is not None else x.contiguous()


def threads() -> int:
    return torch.get_num_threads()


def _cache_dir() -> Path:
    configured = os.environ.get("KAN_ZOO_KERNEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kan_zoo" / "kernels"


def _compiler() -> Optional[str]:
    configured = os.environ.get("CC")
    return shutil.which(configured) if configured else (shutil.which("cc") or shutil.which("gcc"))


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux), else the platform's description."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.machine() + platform.processor()


def _library_name(library: str, source: str, compiler: str, flags: Sequence[str]) -> str:
    key = hashlib.sha256("\0".join([source, compiler, *flags, _cpu_signature()]).encode()).hexdigest()[:16]
    return f"{library}-{key}.so"


def _built(library: str, source: str, compiler: str, flags: Sequence[str]) -> Path:
    """The cached library, built first where missing; in a private temporary directory where the cache
    directory cannot be written."""
    name = _library_name(library, source, compiler, flags)
    fallback = Path(tempfile.gettempdir()) / f"kan_zoo-kernels-{getattr(os, 'getuid', lambda: 0)()}"
    for directory in (_cache_dir(), fallback):
        path = directory / name
        if path.exists():
            return path
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            _build(source, compiler, flags, path)
            return path
    raise OSError(f"no writable directory for {name} (tried {_cache_dir()} and {fallback})")


def _build(source: str, compiler: str, flags: Sequence[str], path: Path) -> None:
    """Compiles ``source`` to ``path`` via a temporary file in the same directory and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, "-x", "c", "-", *flags, "-o", tmp], input=source, text=True, check=True,
                       capture_output=True, timeout=300)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _source(library: str) -> str:
    sources = resources.files(__package__).joinpath("csrc")
    return sources.joinpath(_SHARED_HEADER).read_text() + sources.joinpath(f"{library}.c").read_text()


def _opened(library: str, source: str, compiler: str, flags: Sequence[str]) -> ctypes.CDLL:
    """The library loaded; a cached file that does not load (damaged, or not a library at all) is built again.
    (A cached file is never rewritten in place: a process that has it loaded would crash on its next page.)"""
    path = _built(library, source, compiler, flags)
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return ctypes.CDLL(str(_built(library, source, compiler, flags)))


def _load(library: str) -> Optional[ctypes.CDLL]:
    compiler = _compiler()
    if compiler is None:
        _log.info("kan_zoo: no C compiler found; the basis expansions keep their eager CPU path")
        return None
    source = _source(library)
    errors = []
    for flags in _FLAG_SETS:
        try:
            return _opened(library, source, compiler, flags)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            errors.append(f"{' '.join(flags)}: {detail.strip()[-300:]}")
    warnings.warn(f"kan_zoo: could not build the C kernels {library!r} with {compiler} ({'; '.join(errors)}); "
                  "using the eager path", RuntimeWarning, stacklevel=3)
    return None
