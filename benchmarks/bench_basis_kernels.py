"""The basis expansion alone, forward and backward, with and without the C kernels
(kan_zoo.layers.kernels.native_kernels).

For each basis that has C kernels (and, for scale, the eager fast path of every other separable basis), in a
fresh process: the fused node's forward work (``stacked_basis_into``: the functions written into the stacked
tensor, a piece of the batch at a time where the eager path needs it) and its backward work (dL/dt from the
stacked gradient, ``_expand_backward_by_chunks``), timed eager and with the kernels in interleaved rounds,
medians. "plain" is one nn.Conv2d forward+backward of the same in/out channels, so each figure also reads as a
fraction of a plain convolution. CPU only (on CUDA the Triton kernels play this part: bench_triton.py).

    python benchmarks/bench_basis_kernels.py --reuse-cpu-memory
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Callable, Dict, List

import torch

from _bench_common import add_cpu_flags, apply_cpu_flags, cpu_flag_args, cpu_flags_note, run_worker, timed

NATIVE = ["bspline", "relu", "rbf"]
OTHERS = ["gram", "chebyshev", "legendre", "jacobi", "bernstein"]


def measure(basis: str, args: argparse.Namespace) -> Dict[str, float]:
    from kan_zoo.layers import KANConv2d, native_kernels_enabled, set_native_kernels_enabled
    from kan_zoo.layers.kernels.fused import _expand_backward_by_chunks

    torch.set_num_threads(args.threads)
    c, s = args.channels, args.size
    layer = KANConv2d(c, c, 3, padding=1, basis=basis)
    plain = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
    u = torch.randn(args.n, c, s, s)
    xp = u.clone().requires_grad_(True)
    skip = layer.skips_constant(None)
    with torch.no_grad():  # the fast paths never run under autograd
        stacked = layer.stacked_basis_into(None, u, None, skip_constant=skip)
    grad = torch.randn_like(stacked).unflatten(1, (layer.groups, -1, c // layer.groups))
    kept = stacked.unflatten(1, grad.shape[1:4]) if layer.basis.backward_reads_functions else None

    def forward() -> None:
        layer.stacked_basis_into(None, u, None, skip_constant=skip)

    def backward() -> None:
        _expand_backward_by_chunks(layer.basis, u, grad, skip, kept)

    def plain_step() -> None:
        plain(xp).sum().backward()

    has_kernels = basis in NATIVE and native_kernels_enabled()
    variants: Dict[str, Callable[[], None]] = {"plain": plain_step}
    for mode in (["eager", "native"] if has_kernels else ["eager"]):
        for part, fn in (("fwd", forward), ("bwd", backward)):
            def run(fn=fn, on=mode == "native") -> None:
                previous = set_native_kernels_enabled(on)
                try:
                    fn()
                finally:
                    set_native_kernels_enabled(previous)
            variants[f"{mode}_{part}"] = run
    rounds: Dict[str, List[float]] = {name: [] for name in variants}
    device = torch.device("cpu")
    with torch.no_grad():
        for name, fn in variants.items():  # warm-up: builds the C kernels, settles the allocator
            with torch.enable_grad() if name == "plain" else torch.no_grad():
                fn()
        for _ in range(args.repeats):
            for name, fn in variants.items():
                with torch.enable_grad() if name == "plain" else torch.no_grad():
                    rounds[name].append(statistics.median(timed(fn, device) for _ in range(args.iters)) * 1e3)
    return {name: statistics.median(values) for name, values in rounds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default=",".join(NATIVE + OTHERS))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    add_cpu_flags(ap)
    args = ap.parse_args()
    if args.worker:
        apply_cpu_flags(args)
        print(json.dumps(measure(args.worker, args)))
        return
    shape = [f"--n={args.n}", f"--channels={args.channels}", f"--size={args.size}", f"--threads={args.threads}",
             f"--repeats={args.repeats}", f"--iters={args.iters}"]
    print(f"# bench_basis_kernels: N={args.n}, {args.channels} ch, {args.size}x{args.size}, CPU, {args.threads} "
          f"threads, torch {torch.__version__}; {args.repeats} interleaved rounds x {args.iters} calls, medians; "
          f"one fresh process per basis{cpu_flags_note(args)}")
    print("\n| basis | eager fwd ms | C fwd ms | eager bwd ms | C bwd ms | C speed-up fwd / bwd "
          "| eager fwd+bwd / plain | C fwd+bwd / plain | plain conv fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for basis in args.bases.split(","):
        r = run_worker([sys.executable, __file__, "--worker", basis, *shape, *cpu_flag_args(args)], None, basis)
        if "failed" in r:
            print(f"| {basis} | failed: {r['failed']} |")
            continue
        eager = r["eager_fwd"] + r["eager_bwd"]
        row = [basis, f"{r['eager_fwd']:.1f}", "-", f"{r['eager_bwd']:.1f}", "-", "-", f"{eager / r['plain']:.2f}", "-"]
        if "native_fwd" in r:
            native = r["native_fwd"] + r["native_bwd"]
            row[2], row[4] = f"{r['native_fwd']:.1f}", f"{r['native_bwd']:.1f}"
            row[5] = f"{r['eager_fwd'] / r['native_fwd']:.1f}x / {r['eager_bwd'] / r['native_bwd']:.1f}x"
            row[7] = f"{native / r['plain']:.2f}"
        print("| " + " | ".join(row + [f"{r['plain']:.1f}"]) + " |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
