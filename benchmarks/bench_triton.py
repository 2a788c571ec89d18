"""The Triton basis kernels alone against the torch path they replace, on CUDA (issue 7).

For each basis with kernels at the issue's layer shape (N=8, 64 channels, 56x56) and a larger batch:
  fwd   : writing the stacked basis (base branch + degree + 1 functions) from the input u;
  bwd   : dL/du (and gram's dL/dbeta; rbf's base-branch dL/dx) from the stacked gradient;
  torch : the same through the torch fast path (KAN_ZOO_TRITON off): Basis.expand_into and
          expand_backward plus autograd for tanh and the base branch;
  GB/s  : the bytes a kernel must move at least (fwd: read u, write the stack; bwd: read u and the
          stacked gradient, write dL/du) over its time; "of copy" compares that with a plain
          device-to-device copy of the same number of bytes measured in the same run, the
          practical ceiling of a memory-bound kernel.
Times are CUDA-event medians of 5 rounds x --iters launches after warm-up. Each case also checks
the two paths agree (max relative difference of the stack and of dL/du).

    python benchmarks/bench_triton.py [--batches 8,64] [--dtype float32|bfloat16] [--iters 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace
from typing import Callable, Dict, List

import torch

CASES: Dict[str, dict] = {
    "gram-d3": dict(basis="gram", degree=3),
    "gram-d5": dict(basis="gram", degree=5),
    "chebyshev": dict(basis="chebyshev"),
    "legendre": dict(basis="legendre"),
    "jacobi": dict(basis="jacobi"),
    "bernstein": dict(basis="bernstein"),
    "rbf": dict(basis="rbf"),
    "bspline": dict(basis="bspline"),
    "relu": dict(basis="relu"),
}


def device_time(fn: Callable[[], object], iters: int, device: str, rounds: int = 5) -> float:
    """Median seconds per call of fn over ``rounds`` rounds of ``iters`` calls (CUDA events on cuda)."""
    for _ in range(3):
        fn()
    per_round: List[float] = []
    for _ in range(rounds):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        if device == "cuda":
            end.record()
            torch.cuda.synchronize()
            per_round.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            per_round.append((time.perf_counter() - t0) / iters)
    return statistics.median(per_round)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def torch_backward(layer, x, u: torch.Tensor, grad_stacked: torch.Tensor) -> torch.Tensor:
    """dL/du through the torch path, as kan_zoo.layers.kernels.fused's backward runs it (the basis's
    expand_backward where it has one, autograd over expand otherwise)."""
    from kan_zoo.layers.kernels.fused import _basis_backward

    ctx = SimpleNamespace(x_is_u=x is u, param_names=[n for n, _ in layer.basis.named_parameters()])
    params = [p.detach() for p in layer.basis.parameters()]
    needs = [p.requires_grad for p in layer.basis.parameters()]
    need_x = x is not None
    grads = _basis_backward(ctx, layer, x, u, None, params, grad_stacked, need_x, True, needs)
    return grads[0] if x is u else grads[1]


def run_case(name: str, batch: int, dtype: torch.dtype, iters: int, device: str, size: int) -> dict:
    from kan_zoo.layers import KANConv2d, set_triton_enabled
    from kan_zoo.layers.kernels import triton_basis

    torch.manual_seed(0)
    layer = KANConv2d(64, 64, 3, padding=1, **CASES[name]).to(device)
    with torch.no_grad():
        for n, p in layer.basis.named_parameters():
            p.normal_(std=0.3)
    u = torch.randn(batch, 64, size, size, device=device)
    params = list(layer.basis.parameters())
    # the base branch's input: none, u itself, or (rbf: the basis sees the normalised input) another tensor
    x = None if not layer.base_folded else (torch.randn_like(u) if layer.basis.normalizes_input else u)

    def tri_fwd():
        return triton_basis.stacked_basis(layer, x, u, None, params, dtype)

    def torch_fwd():
        with torch.no_grad():
            return layer.stacked_basis_into(x, u, None).to(dtype)

    stacked = tri_fwd()
    grad_stacked = torch.randn_like(stacked)
    grad_stacked32 = grad_stacked.float()

    def tri_bwd():
        return triton_basis.basis_backward(layer, x, u, None, params, grad_stacked, need_params=True)[1]

    def torch_bwd():
        return torch_backward(layer, x, u, grad_stacked32)

    previous = set_triton_enabled(False)
    try:
        ref_stacked, ref_grad = torch_fwd(), torch_bwd()
        t_torch_fwd, t_torch_bwd = device_time(torch_fwd, iters, device), device_time(torch_bwd, iters, device)
    finally:
        set_triton_enabled(previous)
    out = {
        "stack_diff": rel_diff(stacked, ref_stacked), "grad_diff": rel_diff(tri_bwd(), ref_grad),
        "fwd": device_time(tri_fwd, iters, device), "bwd": device_time(tri_bwd, iters, device),
        "torch_fwd": t_torch_fwd, "torch_bwd": t_torch_bwd,
    }
    elem = stacked.element_size()
    separate_x = x is not None and x is not u
    fwd_bytes = (1 + separate_x) * u.numel() * u.element_size() + stacked.numel() * elem
    bwd_bytes = (2 + 2 * separate_x) * u.numel() * u.element_size() + stacked.numel() * elem
    src = torch.empty(fwd_bytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t_copy = device_time(lambda: dst.copy_(src), iters, device)  # reads and writes fwd_bytes / 2: fwd_bytes moved
    out["fwd_gbs"], out["bwd_gbs"] = fwd_bytes / out["fwd"] / 1e9, bwd_bytes / out["bwd"] / 1e9
    out["copy_gbs"] = fwd_bytes / t_copy / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--batches", default="8,64")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored stack dtype")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu only as a smoke test under TRITON_INTERPRET=1 (Triton's interpreter: no timing value)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_triton needs a CUDA device (on CPU the kernels run only in Triton's interpreter)")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--device cpu needs TRITON_INTERPRET=1 (a smoke test of the script, not a benchmark)")
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton interpreter)"
    print(f"# bench_triton: {name}, torch {torch.__version__}, stack stored as {args.dtype}; "
          f"64 ch, {args.size}x{args.size}; medians of 5 rounds x {args.iters}")
    print("| case | N | fwd us | torch fwd us | fwd speed-up | bwd us | torch bwd us | bwd speed-up "
          "| fwd GB/s | bwd GB/s | copy GB/s | max rel diff stack / grad |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                r = run_case(case, batch, dtype, args.iters, args.device, args.size)
            except Exception as e:  # one failing case must not lose the table
                print(f"| {case} | {batch} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} |", flush=True)
                continue
            print(f"| {case} | {batch} | {r['fwd'] * 1e6:.0f} | {r['torch_fwd'] * 1e6:.0f} "
                  f"| {r['torch_fwd'] / r['fwd']:.2f}x "
                  f"| {r['bwd'] * 1e6:.0f} | {r['torch_bwd'] * 1e6:.0f} | {r['torch_bwd'] / r['bwd']:.2f}x "
                  f"| {r['fwd_gbs']:.0f} | {r['bwd_gbs']:.0f} | {r['copy_gbs']:.0f} "
                  f"| {r['stack_diff']:.1e} / {r['grad_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
