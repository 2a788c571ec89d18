"""Forward+backward time and activation memory of every KAN basis against two yardsticks (issues 2, 7).

Yardsticks, both measured in the same process and the same interleaved rounds as the KAN layer:
  plain: nn.Conv2d + BatchNorm2d + SiLU with the same in/out channels;
  floor: one nn.Conv2d over in_channels x (basis size + 1) channels on a precomputed input, plus the
         layer's own norm -- what a KAN conv costs if the basis expansion were free. The wavelet
         basis has a function per edge (C_out per input channel), so its floor is the layer's own
         convs on its precomputed C_in x (C_out + 1) channels (see Floor).

Method (issue 7's rules): each case (basis) runs in a fresh process; inside it the variants are
timed in interleaved rounds (plain, floor, kan, kan memory-efficient, kan compiled, plain, ...), each
round's figure is the median of --iters steps, and the table quotes the median over rounds. The
"noise" column is the largest max/min ratio of one variant's round figures: the same case measured
several times in one process; above ~1.15 the machine was busy and the row should be re-run. Each
case's comment line also gives kan/floor round by round (kan and floor run back to back in a round,
so a drift of the machine's speed between rounds cancels there).

Memory: "saved" is the bytes of the unique tensors autograd keeps for backward (saved_tensors_hooks,
parameters excluded) -- exactly what memory-efficient mode reduces; deterministic. "RSS" is the
process peak-RSS growth over ONE forward+backward step, each (case, variant) in its own fresh
process (ru_maxrss); it includes temporaries, so it is noisier and coarser.

--device cuda: modules and inputs live on the GPU, every timed step is bracketed by
torch.cuda.synchronize(), and each variant gets 3 warm-up steps (1 on CPU). One more variant,
"kan_torch", is the same KAN layer with the Triton basis kernels switched off
(kan_zoo.layers.set_triton_enabled(False) around its forward and backward), giving the columns
torch/floor and "kan speed-up vs torch" (kan_torch time / kan time). Instead of RSS the table gives
the CUDA peak of one forward+backward step in MiB: torch.cuda.max_memory_allocated() after
reset_peak_memory_stats(), minus what was allocated before the step (parameters, input and the
output gradient are not counted; the step's activations, workspaces and gradients are), measured
after the warm-up in the timing process. --amp runs every forward (and the saved-bytes forward)
under torch.autocast("cuda", dtype=torch.bfloat16); backward runs outside it. A case whose process
fails becomes a "failed: <last error line>" row (traceback on stderr); a variant that fails inside
a working case shows n/a and its error goes to stderr; SIGTERM (e.g. from `timeout`) still prints
the table of the cases finished so far.

    python benchmarks/bench_layers.py                    # full VGG-like shape, all bases
    python benchmarks/bench_layers.py --quick --bases gram,rbf --repeats 3
    python benchmarks/bench_layers.py --compile          # adds the torch.compile column (slow)
    python benchmarks/bench_layers.py --device cuda --amp --repeats 3 --iters 10
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Tuple

import torch
from _bench_common import (add_cpu_flags, apply_cpu_flags, autocast, check_device, cpu_flag_args, cpu_flags_note,
                           cuda_peak_bytes, interrupt_on_sigterm, run_worker, sync, timed, warmup_steps)
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
VARIANTS = ("plain", "floor", "kan", "kan_torch", "kan_me", "kan_compiled")
CUDA_ONLY = ("kan_torch",)  # on CPU there are no Triton kernels, so kan_torch would equal kan
PEAK_VARIANTS = ("plain", "kan", "kan_torch", "kan_me")


@dataclass
class Shape:
    n: int
    channels: int
    size: int
    kernel: int = 3


FULL = Shape(8, 64, 56)
QUICK = Shape(4, 32, 28)


# ---------------------------------------------------------------------------------------------- device
@contextlib.contextmanager
def triton_off() -> Iterator[None]:
    """Switch kan_zoo's Triton basis kernels off for the block, restoring the previous setting after."""
    from kan_zoo.layers import set_triton_enabled

    previous = set_triton_enabled(False)
    try:
        yield
    finally:
        set_triton_enabled(previous)


def variant_context(variant: str) -> ContextManager:
    """What a variant runs under, forward and backward: kan_torch without the Triton kernels."""
    return triton_off() if variant == "kan_torch" else contextlib.nullcontext()


def device_summary(device: torch.device, threads: int, amp: bool) -> str:
    """Header words for the device: CPU threads, or the GPU, autocast and Triton state."""
    if device.type != "cuda":
        return f"CPU, {threads} threads"
    try:
        import triton

        triton_version = f"triton {triton.__version__}"
    except ImportError:
        triton_version = "no triton"
    try:
        from kan_zoo.layers import triton_enabled

        kernels = "on" if triton_enabled() else "OFF (KAN_ZOO_TRITON=0)"
    except ImportError:
        kernels = "n/a (this kan_zoo has no set_triton_enabled)"
    return (f"cuda {torch.cuda.get_device_name(device)}, amp (bf16 autocast) {'on' if amp else 'off'}, "
            f"{triton_version}, kan Triton kernels {kernels}, {warmup_steps(device)} warm-up steps per variant")


# ---------------------------------------------------------------------------------------------- modules
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
    """Functions per input channel of the layer's basis (the floor conv has basis_size + 1 of them).
    A non-separable basis (wavelet) has one per edge: C_out of them per input channel."""
    return layer.basis.num_functions if layer.basis.separable else layer.out_channels


class Floor(nn.Module):
    """The conv a KAN layer reduces to, on an input that is already expanded, plus the layer's norm.

    Separable bases: one conv over the (basis size + 1) x C_in channels. Wavelet: its functions
    differ per edge, so its precomputed input is the base's C_in channels plus C_out x C_in wavelet
    channels, and the layer's own convs run on it: the base conv, the grouped conv in which each output
    reads its C_in wavelet channels, the 1x1 output mix."""

    def __init__(self, layer: nn.Module, shape: Shape) -> None:
        super().__init__()
        c, k = shape.channels, shape.kernel
        self.separable = layer.basis.separable
        if self.separable:
            self.conv = nn.Conv2d(c * (basis_size(layer) + 1), c, k, padding=k // 2, bias=False)
        else:
            if layer.groups != 1:
                raise ValueError("the wavelet floor is written for groups=1")
            self.conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False)
            self.edge_conv = nn.Conv2d(c * basis_size(layer), c, k, padding=k // 2, groups=c, bias=False)
            self.mix = nn.Conv2d(c, c, 1, bias=False)
        # The layer's own norm type (InstanceNorm for most bases, BatchNorm for wavelet).
        norm = layer.norm
        self.norm = type(norm)(c, affine=getattr(norm, "affine", False)) if not isinstance(
            norm, nn.Identity) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.separable:
            return self.norm(self.conv(x))
        c = self.conv.in_channels
        return self.norm(self.conv(x[:, :c]) + self.mix(self.edge_conv(x[:, c:])))


def build_variant(case: str, variant: str, shape: Shape,
                  device: torch.device) -> Tuple[nn.Module, torch.Tensor]:
    """(module, input) for one variant on ``device``; every input requires grad, as a layer inside a network does."""
    c, s, k = shape.channels, shape.size, shape.kernel
    kan = build_kan(case, shape, variant == "kan_me")
    if variant == "plain":
        module: nn.Module = nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.SiLU())
        x = torch.randn(shape.n, c, s, s, device=device)
    elif variant == "floor":
        module = Floor(kan, shape)
        x = torch.randn(shape.n, c * (basis_size(kan) + 1), s, s, device=device)
    else:
        module = kan
        x = torch.randn(shape.n, c, s, s, device=device)
    module = module.to(device)
    if variant == "kan_compiled":
        module = torch.compile(module, dynamic=False)
    return module.train(), x.requires_grad_(True)


def make_forward(module: nn.Module, x: torch.Tensor, variant: str, amp: bool) -> Callable[[], torch.Tensor]:
    def forward() -> torch.Tensor:
        with variant_context(variant), autocast(amp):
            return module(x)

    return forward


def make_step(module: nn.Module, x: torch.Tensor, variant: str, amp: bool) -> Callable[[], None]:
    """One forward (under autocast with --amp) + backward (outside it), gradients cleared first."""
    forward = make_forward(module, x, variant, amp)
    grad_out = torch.randn_like(forward()).detach()
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        with variant_context(variant):
            forward().backward(grad_out)

    return step


def saved_bytes(module: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
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
        out = forward()
    del out
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------- workers
def error_line(e: BaseException) -> str:
    return traceback.format_exception_only(type(e), e)[-1].strip()


def prepare(module: nn.Module, x: torch.Tensor, variant: str, device: torch.device, amp: bool, peak: bool,
            result: dict) -> Callable[[], None]:
    """Warm one variant up (compiling it, for kan_compiled), take its memory figures; its step function."""
    forward = make_forward(module, x, variant, amp)
    sync(device)
    t0 = time.perf_counter()
    step = make_step(module, x, variant, amp)
    for _ in range(warmup_steps(device)):
        step()  # warm up (and compile, for the compiled variant)
        if variant == "kan_compiled" and result["compile_s"] is None:
            sync(device)
            result["compile_s"] = time.perf_counter() - t0
    if variant == "kan_compiled":
        with torch.no_grad(), autocast(amp):
            result["compiled_max_abs_diff"] = (module(x) - module._orig_mod(x)).float().abs().max().item()
    else:
        result["saved"][variant] = saved_bytes(module, forward)
    if peak and variant in PEAK_VARIANTS:
        for p in module.parameters():
            p.grad = None
        x.grad = None
        result["peak"][variant] = cuda_peak_bytes(step, device)
    return step


def time_worker(case: str, shape: Shape, variants: List[str], repeats: int, iters: int,
                device: torch.device, amp: bool = False, peak: bool = False) -> dict:
    """Interleaved rounds over the variants of one case, in this (fresh) process.

    A variant that raises is dropped (its error in result["errors"], its traceback on stderr); the
    process fails only when no variant is left.
    """
    torch.manual_seed(0)
    steps: Dict[str, Callable[[], None]] = {}
    result: dict = {"saved": {}, "rounds": {}, "compile_s": None, "peak": {}, "errors": {}}

    def fail(v: str, e: Exception) -> None:
        traceback.print_exc()
        result["errors"][v] = error_line(e)
        steps.pop(v, None)
        result["rounds"].pop(v, None)

    for v in variants:
        try:
            module, x = build_variant(case, v, shape, device)
        except NotImplementedError:
            continue
        try:
            steps[v] = prepare(module, x, v, device, amp, peak, result)
            result["rounds"][v] = []
        except Exception as e:  # noqa: BLE001 -- reported, the other variants go on
            fail(v, e)
    for _ in range(repeats):
        for v, step in list(steps.items()):
            try:
                step()  # one untimed step re-warms caches after the previous variant
                times = [timed(step, device) for _ in range(iters)]
            except Exception as e:  # noqa: BLE001
                fail(v, e)
                continue
            result["rounds"][v].append(statistics.median(times))
    if not steps:
        raise RuntimeError(f"every variant failed: {result['errors']}")
    return result


def rss_worker(case: str, shape: Shape, variant: str) -> dict:
    """Peak-RSS growth (bytes) of one forward+backward step of one variant, in this fresh process."""
    torch.manual_seed(0)
    module, x = build_variant(case, variant, shape, torch.device("cpu"))
    with torch.no_grad():
        grad_out = torch.randn_like(module(x))
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    module(x).backward(grad_out)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss": (after - before) * 1024}  # ru_maxrss is in KiB on Linux


class ChildFailed(RuntimeError):
    """A worker process exited non-zero (or timed out); the message is its last error line."""


def run_child(args: List[str], timeout: Optional[float] = None) -> dict:
    """Run this script as a worker; its JSON result, or ChildFailed with the traceback sent to stderr."""
    result = run_worker([sys.executable, os.path.abspath(__file__)] + args, timeout, " ".join(args))
    if "failed" in result:
        raise ChildFailed(result["failed"])
    return result


# ---------------------------------------------------------------------------------------------- report
def fmt(v: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def mib(v: Optional[float]) -> Optional[float]:
    return None if v is None else v / 2**20


def header(cuda: bool) -> List[str]:
    speed = ["torch/floor", "kan speed-up vs torch"] if cuda else []
    memory = (["peak MiB plain", "peak MiB kan", "peak MiB torch", "peak MiB mem-eff"] if cuda
              else ["RSS kan/plain", "RSS mem-eff/plain"])
    return (["case", "kan ms", "kan/floor", "kan/plain"] + speed
            + ["mem-eff/floor", "mem-eff/kan", "compile speed-up", "saved MiB", "saved kan/plain",
               "saved mem-eff/plain"]
            + memory + ["noise"])


def table_row(case: str, r: dict, rss: Dict[str, int], cuda: bool) -> List[str]:
    med = {v: statistics.median(ts) for v, ts in r["rounds"].items() if ts}
    noise = max((max(ts) / min(ts) for ts in r["rounds"].values() if ts), default=None)
    saved, peak = r["saved"], r.get("peak", {})
    kan, me, comp, floor = med.get("kan"), med.get("kan_me"), med.get("kan_compiled"), med.get("floor")
    speed = [fmt(ratio(med.get("kan_torch"), floor)), fmt(ratio(med.get("kan_torch"), kan))] if cuda else []
    memory = ([fmt(mib(peak.get(v)), ".1f") for v in ("plain", "kan", "kan_torch", "kan_me")] if cuda
              else [fmt(ratio(rss.get("kan"), rss.get("plain"))), fmt(ratio(rss.get("kan_me"), rss.get("plain")))])
    return ([case, fmt(kan * 1e3 if kan is not None else None, ".3f" if cuda else ".0f"), fmt(ratio(kan, floor)),
             fmt(ratio(kan, med.get("plain")))] + speed
            + [fmt(ratio(me, floor)), fmt(ratio(me, kan)), fmt(ratio(kan, comp)), fmt(mib(saved.get("kan")), ".1f"),
               fmt(ratio(saved.get("kan"), saved.get("plain"))), fmt(ratio(saved.get("kan_me"), saved.get("plain")))]
            + memory + [fmt(noise)])


def paired_ratios(r: dict, a: str, b: str) -> List[float]:
    """Variant a's round figure over variant b's, round by round (both timed in the same round)."""
    rounds = r["rounds"]
    return [x / y for x, y in zip(rounds.get(a, []), rounds.get(b, [])) if y]


def case_note(case: str, r: dict, cuda: bool) -> str:
    med = {v: statistics.median(ts) for v, ts in r["rounds"].items() if ts}
    ms = ".3f" if cuda else ".0f"
    note = (f"#   {case}: plain {fmt(med['plain'] * 1e3 if 'plain' in med else None, ms)} ms, "
            f"floor {fmt(med['floor'] * 1e3 if 'floor' in med else None, ms)} ms, "
            f"saved plain {fmt(mib(r['saved'].get('plain')), '.1f')} MiB")
    per_round = paired_ratios(r, "kan", "floor")
    if per_round:  # back-to-back in each round, so drift between rounds cancels
        note += (f", kan/floor per round {min(per_round):.2f}-{max(per_round):.2f} "
                 f"(median {statistics.median(per_round):.2f})")
    if "kan_compiled" in med:
        note += f", compile {r['compile_s']:.0f}s, max|compiled-eager| {r['compiled_max_abs_diff']:.1e}"
    if "kan_torch" in med:
        note += f", kan_torch {med['kan_torch'] * 1e3:{ms}} ms"
    for v, e in r.get("errors", {}).items():
        note += f"; {v} failed: {e}"
    return note


def measure_case(case: str, args: argparse.Namespace, common: List[str]) -> Tuple[dict, Dict[str, int]]:
    """The timing worker's result for one case and (on CPU, unless --no-rss) its per-variant RSS."""
    cuda = args.device == "cuda"
    r = run_child(["--worker", case, "--repeats", str(args.repeats), "--iters", str(args.iters)] + common
                  + (["--compile"] if args.compile else []) + (["--no-rss"] if args.no_rss else []),
                  args.child_timeout)
    rss: Dict[str, int] = {}
    if not args.no_rss and not cuda:
        for v in ("plain", "kan", "kan_me"):
            if v in r["rounds"]:
                try:
                    rss[v] = run_child(["--worker", case, "--rss-variant", v] + common, args.child_timeout)["rss"]
                except ChildFailed as e:
                    print(f"# {case} RSS of {v} failed: {e}", file=sys.stderr)
    return r, rss


def worker_main(args: argparse.Namespace, shape: Shape) -> None:
    device = torch.device(args.device)
    if args.rss_variant:
        out = rss_worker(args.worker, shape, args.rss_variant)
    else:
        variants = [v for v in VARIANTS if (v != "kan_compiled" or args.compile)
                    and (v not in CUDA_ONLY or device.type == "cuda")]
        out = time_worker(args.worker, shape, variants, args.repeats, args.iters, device, args.amp,
                          peak=device.type == "cuda" and not args.no_rss)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"small shape {QUICK} instead of {FULL}")
    ap.add_argument("--bases", default=",".join(CASES), help="comma-separated cases: " + ",".join(CASES))
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per case")
    ap.add_argument("--iters", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(layer) (slow on CPU)")
    ap.add_argument("--compile-eager-node", action="store_true",
                    help="with --compile: KANConvNd.compile_calls_eager_node = True, so that compiled CPU graphs call "
                         "the separable bases' fused node outside the graph (default: plain ops in the graph)")
    ap.add_argument("--no-rss", action="store_true",
                    help="skip the memory measurement (fresh-process RSS on cpu, CUDA peak on cuda)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (matters on cpu only)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for every forward (cuda only)")
    ap.add_argument("--child-timeout", type=float, default=0,
                    help="seconds before a case's worker process is killed and its row marked failed (0: none)")
    add_cpu_flags(ap)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--rss-variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.amp and args.device != "cuda":
        ap.error("--amp needs --device cuda")
    check_device(args.device)
    torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL

    if args.worker:
        apply_cpu_flags(args)
        if args.compile_eager_node:
            from kan_zoo.layers import KANConvNd

            KANConvNd.compile_calls_eager_node = True
        worker_main(args, shape)
        return

    cases = [c.strip() for c in args.bases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    cuda = args.device == "cuda"
    common = (["--threads", str(args.threads), "--device", args.device] + (["--quick"] if args.quick else [])
              + (["--amp"] if args.amp else []) + (["--compile-eager-node"] if args.compile_eager_node else [])
              + cpu_flag_args(args))
    print(f"# bench_layers: N={shape.n}, {shape.channels}->{shape.channels} ch, {shape.size}x{shape.size}, "
          f"{shape.kernel}x{shape.kernel}, {device_summary(torch.device(args.device), args.threads, args.amp)}, "
          f"torch {torch.__version__}; {args.repeats} interleaved rounds x {args.iters} steps, medians; "
          f"one fresh process per case" + cpu_flags_note(args)
          + ("; compiled graphs call the fused node" if args.compile_eager_node else ""), flush=True)
    rows: List[List[str]] = []
    interrupt_on_sigterm()
    try:
        for case in cases:
            try:
                r, rss = measure_case(case, args, common)
            except ChildFailed as e:
                rows.append([case, "failed: " + str(e).replace("|", "/")] + [""] * (len(header(cuda)) - 2))
                print(f"#   {case}: failed: {e}", flush=True)
                continue
            rows.append(table_row(case, r, rss, cuda))
            print(case_note(case, r, cuda), flush=True)
    except KeyboardInterrupt:
        print(f"# interrupted: the table has the {len(rows)} cases finished before", flush=True)
    print()
    print("| " + " | ".join(header(cuda)) + " |")
    print("|" + "|".join("---" for _ in header(cuda)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    floor = ("floor = conv over C_in*(basis size+1) channels on a precomputed input + the layer's norm (wavelet:"
             " its base, edge and mix convs on C_in*(C_out+1) channels); plain = Conv2d+BatchNorm2d+SiLU")
    if cuda:
        print(f"\nfwd+bwd times (synchronized); {floor}; torch = the kan layer with set_triton_enabled(False);"
              " kan speed-up vs torch = torch time / kan time; saved = activation bytes autograd keeps for backward"
              " (saved_tensors_hooks); peak = torch.cuda.max_memory_allocated growth over one step after warm-up"
              " (parameters and input excluded).")
    else:
        print(f"\nfwd+bwd times; {floor}; saved = activation bytes autograd keeps for backward"
              " (saved_tensors_hooks); RSS = peak-RSS growth of one step in a fresh process.")


if __name__ == "__main__":
    main()
