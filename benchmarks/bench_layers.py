"""Forward+backward time and activation memory of every KAN basis against two yardsticks (issues 2, 7).

Yardsticks, both measured in the same process and the same interleaved rounds as the KAN layer:
  plain: nn.Conv2d + BatchNorm2d + SiLU with the same in/out channels;
  floor: one nn.Conv2d over in_channels x (basis size + 1) channels on a precomputed input, plus the
         layer's own norm -- what a KAN conv costs if the basis expansion were free.

Method (issue 7's rules): each case (basis) runs in a fresh process; inside it the variants are
timed in interleaved rounds (plain, floor, kan, kan memory-efficient, kan compiled, plain, ...), each
round's figure is the median of --iters steps, and the table quotes the median over rounds. The
"noise" column is the largest max/min ratio of one variant's round figures: the same case measured
several times in one process; above ~1.15 the machine was busy and the row should be re-run.

Memory: "saved" is the bytes of the unique tensors autograd keeps for backward (saved_tensors_hooks,
parameters excluded) -- exactly what memory-efficient mode reduces; deterministic. "RSS" is the
process peak-RSS growth over ONE forward+backward step, each (case, variant) in its own fresh
process (ru_maxrss); it includes temporaries, so it is noisier and coarser.

    python benchmarks/bench_layers.py                    # full VGG-like shape, all bases
    python benchmarks/bench_layers.py --quick --bases gram,rbf --repeats 3
    python benchmarks/bench_layers.py --compile          # adds the torch.compile column (slow)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

# name -> (basis, KANConv2d options); degree 3 everywhere except gram-d5, other options at defaults.
CASES: Dict[str, Tuple[str, dict]] = {
    "gram-d3": ("gram", {"degree": 3}),
    "gram-d5": ("gram", {"degree": 5}),
    "chebyshev": ("chebyshev", {}),
    "legendre": ("legendre", {}),
    "jacobi": ("jacobi", {}),
    "bernstein": ("bernstein", {}),
    "bspline": ("bspline", {}),
    "rbf": ("rbf", {}),
    "relu": ("relu", {}),
    "wavelet": ("wavelet", {}),
    "bottleneck-gram": ("gram", {"degree": 3, "bottleneck": True}),
}
VARIANTS = ("plain", "floor", "kan", "kan_me", "kan_compiled")


@dataclass
class Shape:
    n: int
    channels: int
    size: int
    kernel: int = 3


FULL = Shape(8, 64, 56)
QUICK = Shape(4, 32, 28)


def build_kan(case: str, shape: Shape, memory_efficient: bool) -> nn.Module:
    from kan_zoo import layers

    basis, options = CASES[case]
    options = dict(options)
    cls = layers.BottleneckKANConv2d if options.pop("bottleneck", False) else layers.KANConv2d
    layer = cls(shape.channels, shape.channels, shape.kernel, padding=shape.kernel // 2, basis=basis, **options)
    if memory_efficient:
        if not hasattr(layers, "set_memory_efficient"):
            raise NotImplementedError("this kan_zoo has no memory-efficient mode")
        layers.set_memory_efficient(layer, True)
    return layer


def basis_size(layer: nn.Module) -> int:
    """Functions per input channel of the layer's basis (the floor conv has basis_size + 1 of them)."""
    return layer.basis.num_functions


class Floor(nn.Module):
    """The conv a KAN layer reduces to, on an input that is already expanded, plus the layer's norm."""

    def __init__(self, layer: nn.Module, shape: Shape) -> None:
        super().__init__()
        k = shape.kernel
        self.conv = nn.Conv2d(shape.channels * (basis_size(layer) + 1), shape.channels, k, padding=k // 2, bias=False)
        # The layer's own norm type (InstanceNorm for most bases, BatchNorm for wavelet).
        norm = layer.norm
        self.norm = type(norm)(shape.channels, affine=getattr(norm, "affine", False)) if not isinstance(
            norm, nn.Identity) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def build_variant(case: str, variant: str, shape: Shape) -> Tuple[nn.Module, torch.Tensor]:
    """(module, input) for one variant; every input requires grad, as a layer inside a network does."""
    c, s, k = shape.channels, shape.size, shape.kernel
    kan = build_kan(case, shape, variant == "kan_me")
    if variant == "plain":
        module: nn.Module = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.SiLU())
        x = torch.randn(shape.n, c, s, s)
    elif variant == "floor":
        module = Floor(kan, shape)
        x = torch.randn(shape.n, c * (basis_size(kan) + 1), s, s)
    else:
        module = kan
        x = torch.randn(shape.n, c, s, s)
        if variant == "kan_compiled":
            module = torch.compile(kan, dynamic=False)
    return module.train(), x.requires_grad_(True)


def make_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    grad_out = torch.randn_like(module(x)).detach()
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(grad_out)

    return step


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique non-parameter tensors autograd saves for backward during one forward."""
    held = {p.untyped_storage().data_ptr() for p in module.parameters()}
    held |= {b.untyped_storage().data_ptr() for b in module.buffers()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in held and t.device.type != "meta":
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    del out
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------- workers
def time_worker(case: str, shape: Shape, variants: List[str], repeats: int, iters: int) -> dict:
    """Interleaved rounds over the variants of one case, in this (fresh) process."""
    torch.manual_seed(0)
    steps, result = {}, {"saved": {}, "rounds": {}, "compile_s": None}
    for v in variants:
        try:
            module, x = build_variant(case, v, shape)
        except NotImplementedError:
            continue
        t0 = time.perf_counter()
        step = make_step(module, x)
        step()  # warm up (and compile, for the compiled variant)
        if v == "kan_compiled":
            result["compile_s"] = time.perf_counter() - t0
            with torch.no_grad():
                result["compiled_max_abs_diff"] = (module(x) - module._orig_mod(x)).abs().max().item()
        else:
            result["saved"][v] = saved_bytes(module, x)
        steps[v] = step
        result["rounds"][v] = []
    for _ in range(repeats):
        for v, step in steps.items():
            step()  # one untimed step re-warms caches after the previous variant
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            result["rounds"][v].append(statistics.median(times))
    return result


def rss_worker(case: str, shape: Shape, variant: str) -> dict:
    """Peak-RSS growth (bytes) of one forward+backward step of one variant, in this fresh process."""
    torch.manual_seed(0)
    module, x = build_variant(case, variant, shape)
    with torch.no_grad():
        grad_out = torch.randn_like(module(x))
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    module(x).backward(grad_out)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss": (after - before) * 1024}  # ru_maxrss is in KiB on Linux


def run_child(args: List[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report
def fmt(v: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"small shape {QUICK} instead of {FULL}")
    ap.add_argument("--bases", default=",".join(CASES), help="comma-separated cases: " + ",".join(CASES))
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per case")
    ap.add_argument("--iters", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(layer) (slow on CPU)")
    ap.add_argument("--no-rss", action="store_true", help="skip the per-variant fresh-process RSS measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--rss-variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL

    if args.worker:
        if args.rss_variant:
            out = rss_worker(args.worker, shape, args.rss_variant)
        else:
            variants = [v for v in VARIANTS if v != "kan_compiled" or args.compile]
            out = time_worker(args.worker, shape, variants, args.repeats, args.iters)
        print(json.dumps(out))
        return

    cases = [c.strip() for c in args.bases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    common = ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    print(f"# bench_layers: N={shape.n}, {shape.channels}->{shape.channels} ch, {shape.size}x{shape.size}, "
          f"{shape.kernel}x{shape.kernel}, CPU, {args.threads} threads, torch {torch.__version__}; "
          f"{args.repeats} interleaved rounds x {args.iters} steps, medians; one fresh process per case", flush=True)
    rows = []
    for case in cases:
        r = run_child(["--worker", case, "--repeats", str(args.repeats), "--iters", str(args.iters)]
                      + common + (["--compile"] if args.compile else []))
        med = {v: statistics.median(ts) for v, ts in r["rounds"].items()}
        noise = max(max(ts) / min(ts) for ts in r["rounds"].values())
        rss = {}
        if not args.no_rss:
            for v in ("plain", "kan", "kan_me"):
                if v in med:
                    rss[v] = run_child(["--worker", case, "--rss-variant", v] + common)["rss"]
        saved = r["saved"]
        kan, me, comp = med.get("kan"), med.get("kan_me"), med.get("kan_compiled")
        rows.append([
            case,
            fmt(kan * 1e3, ".0f"),
            fmt(kan / med["floor"]),
            fmt(kan / med["plain"]),
            fmt(me / med["floor"] if me else None),
            fmt(me / kan if me else None),
            fmt(med["kan"] / comp if comp else None),
            fmt(saved["kan"] / 2**20, ".1f"),
            fmt(saved["kan"] / saved["plain"]),
            fmt(saved["kan_me"] / saved["plain"] if "kan_me" in saved else None),
            fmt(rss["kan"] / rss["plain"] if rss.get("plain") else None),
            fmt(rss["kan_me"] / rss["plain"] if rss.get("plain") and "kan_me" in rss else None),
            fmt(noise),
        ])
        extra = f", compile {r['compile_s']:.0f}s, max|compiled-eager| {r['compiled_max_abs_diff']:.1e}" if comp else ""
        print(f"#   {case}: plain {med['plain'] * 1e3:.0f} ms, floor {med['floor'] * 1e3:.0f} ms, "
              f"saved plain {saved['plain'] / 2**20:.1f} MiB{extra}", flush=True)
    header = ["case", "kan ms", "kan/floor", "kan/plain", "mem-eff/floor", "mem-eff/kan", "compile speed-up",
              "saved MiB", "saved kan/plain", "saved mem-eff/plain", "RSS kan/plain", "RSS mem-eff/plain", "noise"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nfwd+bwd times; floor = conv over C_in*(basis size+1) channels on a precomputed input + the layer's norm;"
          " plain = Conv2d+BatchNorm2d+SiLU; saved = activation bytes autograd keeps for backward"
          " (saved_tensors_hooks); RSS = peak-RSS growth of one step in a fresh process.")


if __name__ == "__main__":
    main()
