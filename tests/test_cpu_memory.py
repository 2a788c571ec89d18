"""kan_zoo.reuse_cpu_memory: after it, repeated training steps stop faulting in fresh pages.

The switch is process-wide, so every measurement runs in its own Python process. Page faults
(getrusage's ru_minflt) are counted, not timed: a deterministic figure.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import kan_zoo
from kan_zoo import cpu_memory

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# A KAN layer's training step at a size whose stacked basis (16 x 5 * 32 channels x 56 x 56 floats,
# 61 MiB) is above glibc's largest adaptive mmap threshold (32 MiB), so without the switch every
# step maps it afresh. The script prints the median faults of eight steps after six warm-up steps.
_STEP_SCRIPT = """
import json, resource, sys
import torch
import kan_zoo
applied = kan_zoo.reuse_cpu_memory() if sys.argv[1] == "reuse" else None
torch.manual_seed(0)
torch.set_num_threads(1)
layer = kan_zoo.layers.KANConv2d(32, 32, 3, padding=1, basis="gram")
x = torch.randn(16, 32, 56, 56, requires_grad=True)
def step():
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).square().mean().backward()
for _ in range(6):  # the heap's layout settles over the first steps
    step()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median step: with the switch, an occasional step still grows the heap (1,568-3,136 faults,
# measured) while the others fault nothing; without it every step faults ~22,000 times.
print(json.dumps({"applied": applied, "faults_per_step": sorted(faults)[len(faults) // 2], "all": faults}))
"""
_STACKED_PAGES = 16 * 5 * 32 * 56 * 56 * 4 // 4096


def _faults_per_step(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _STEP_SCRIPT, mode], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300,
                         cwd=str(Path(kan_zoo.__file__).parent.parent))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@glibc_only
def test_training_steps_stop_faulting_fresh_pages():
    reused = _faults_per_step("reuse")
    assert reused["applied"] is True
    # Every step still allocates (and frees) the stacked basis, its gradient, the output...: with the
    # switch they come from memory the process already has (median measured: 0; without it ~2.8x the pages).
    assert reused["faults_per_step"] < 0.1 * _STACKED_PAGES, reused
    if not _transparent_huge_pages_always():  # with 2 MiB pages a fresh mapping faults 512x less
        default = _faults_per_step("default")
        assert default["faults_per_step"] > 0.5 * _STACKED_PAGES, default


def test_without_glibc_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(cpu_memory.platform, "libc_ver", lambda: ("", ""))
    assert kan_zoo.reuse_cpu_memory() is False


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, "1G"])
def test_rejects_a_bad_block_size(bad):
    with pytest.raises(ValueError, match="max_block_bytes"):
        kan_zoo.reuse_cpu_memory(bad)
