"""Helpers shared by bench_layers.py and bench_models.py: device timing and memory, and running a
measurement in a fresh worker process whose failure becomes a table row instead of a crash.

The scripts import it as a sibling module (python puts benchmarks/ on sys.path for them).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, ContextManager, List, Optional, TypeVar

import torch


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU, where ops are synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, including the device work it queued."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """CUDA memory peak of one call of ``fn`` above what was allocated before it (bytes)."""
    gc.collect()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def warmup_steps(device: torch.device) -> int:
    return 3 if device.type == "cuda" else 1


def autocast(amp: bool) -> ContextManager:
    """bf16 autocast on CUDA for --amp, else nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def check_device(device: str) -> None:
    """Fail early, before any child process, when --device cuda cannot work."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: CUDA is not available to this torch {torch.__version__} "
                         f"(built with CUDA {torch.version.cuda}); run on a GPU machine or use --device cpu")


REUSE_CPU_MEMORY_HELP = ("workers keep freed CPU memory for reuse (kan_zoo.reuse_cpu_memory: glibc mallopt), so steps "
                         "stop paying page faults for fresh activations; default: the C library's own policy")
CPU_KERNELS_HELP = ("workers use the compiled CPU basis kernels (kan_zoo.layers.set_cpu_kernels_enabled: torch.compile "
                    "of the basis expansion alone, where a basis has one; compiled in the warm-up steps)")
NO_NATIVE_KERNELS_HELP = ("workers run without the C basis kernels (kan_zoo.layers.set_native_kernels_enabled(False); "
                          "on by default where a C compiler is found): the eager CPU path, for before/after figures")


def add_cpu_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--reuse-cpu-memory", action="store_true", help=REUSE_CPU_MEMORY_HELP)
    ap.add_argument("--cpu-kernels", action="store_true", help=CPU_KERNELS_HELP)
    ap.add_argument("--no-native-kernels", action="store_true", help=NO_NATIVE_KERNELS_HELP)


def cpu_flag_args(args: argparse.Namespace) -> List[str]:
    """The flags again, for a worker's command line."""
    return ((["--reuse-cpu-memory"] if args.reuse_cpu_memory else []) + (["--cpu-kernels"] if args.cpu_kernels else [])
            + (["--no-native-kernels"] if args.no_native_kernels else []))


def cpu_flags_note(args: argparse.Namespace) -> str:
    """The flags in words, for a table's header line."""
    return (("; freed CPU memory reused" if args.reuse_cpu_memory else "")
            + ("; compiled CPU basis kernels" if args.cpu_kernels else "")
            + ("; no C basis kernels" if args.no_native_kernels else ""))


def apply_cpu_flags(args: argparse.Namespace) -> None:
    """In a worker, before any tensor is made: switch the allocator policy and kernels the flags ask for."""
    if args.reuse_cpu_memory:
        from kan_zoo.cpu_memory import reuse_cpu_memory

        if not reuse_cpu_memory():
            raise SystemExit("--reuse-cpu-memory needs Linux with glibc")
    if args.cpu_kernels:
        from kan_zoo.layers import set_cpu_kernels_enabled

        set_cpu_kernels_enabled(True)
    if args.no_native_kernels:
        from kan_zoo.layers import set_native_kernels_enabled

        set_native_kernels_enabled(False)


def last_error(stderr: str) -> str:
    """The exception line of the last traceback in ``stderr``, else its last non-empty line."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        after = [line for line in lines[starts[-1] + 1:] if not line[0].isspace()]
        if after:
            return after[0]
    return lines[-1] if lines else ""


def run_worker(cmd: List[str], timeout: Optional[float], label: str) -> dict:
    """The JSON result a worker prints last, or {"failed": reason} (its traceback goes to stderr)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or None)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    if proc.returncode:
        print(f"# {label} failed (exit status {proc.returncode}):\n{proc.stderr[-4000:]}", file=sys.stderr)
        reason = last_error(proc.stderr)
        if proc.returncode < 0:
            reason = f"killed by signal {-proc.returncode}" + (f" ({reason})" if reason else "")
        return {"failed": reason or f"exit status {proc.returncode}"}
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"failed": f"no result on stdout: {proc.stdout[-200:]!r}"}
    if result.get("errors"):
        print(f"# {label}: variants failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
    return result


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into KeyboardInterrupt, so the parent still prints its table."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


T = TypeVar("T")


def in_workdir(workdir: Optional[str], prefix: str, fn: Callable[[Path], T]) -> T:
    """``fn(folder)`` in ``workdir`` (created, kept) or, when None, in a temporary folder removed after."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return fn(Path(workdir))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return fn(Path(tmp))
