"""Model-level cost of KAN convs (issue 7): inference images/s and the memory of one training step.

For kan_vgg11_gram, kan_vgg11_bottleneck_gram and kan_resnet18_gram beside timm's resnet18, in the
default and the memory-efficient mode (kan_zoo.layers.set_memory_efficient). Every (model, mode)
runs in a fresh process; models that are not registered yet are skipped with a message.

  images/s : eval mode, no grad, --batch images at --size px, median of --iters timed batches
             (memory-efficient mode changes nothing without grad, so it is measured once);
  saved    : bytes of the activations autograd keeps for backward in one training forward
             (saved_tensors_hooks, parameters excluded), batch --train-batch;
  peak RSS : process peak-RSS growth over one full training step (forward, backward, SGD step).

--device cuda: model and inputs on the GPU, every timed call bracketed by torch.cuda.synchronize(),
3 warm-up iterations before any timing or memory figure (1 on CPU). Instead of peak RSS the table
gives the CUDA peak of one training step (forward, backward, SGD step): torch.cuda.max_memory_allocated()
after reset_peak_memory_stats(), minus what was allocated before the step -- model weights and the
input batch are not counted, the gradients, activations and workspaces are. "train step ms" is the
median of --iters training steps (on CPU: the first step, in seconds). --amp runs every forward
(inference and training) under torch.autocast("cuda", dtype=torch.bfloat16), backward outside it.
--triton on|off|both measures the KAN models with kan_zoo.layers.set_triton_enabled(True) and/or
(False), one process and one row per setting (default both; off where KAN_ZOO_TRITON=0 is set);
the "triton" column says which, "-" for a model without KAN layers (one row). A (model, mode,
triton) whose process fails gets a "failed: <last error line>" row (its traceback on stderr) and
the table goes on; SIGTERM (e.g. from `timeout`) still prints the rows finished so far.

    python benchmarks/bench_models.py [--models kan_vgg11_gram,resnet18] [--size 224] [--quick]
    python benchmarks/bench_models.py --device cuda --batch 64 [--amp] [--triton both]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
from typing import Callable, Dict, List, Optional

import torch
from _bench_common import (add_cpu_flags, apply_cpu_flags, autocast, check_device, cpu_flag_args, cpu_flags_note,
                           cuda_peak_bytes, interrupt_on_sigterm, run_worker, timed, warmup_steps)

MODELS = ("resnet18", "kan_vgg11_gram", "kan_vgg11_bottleneck_gram", "kan_resnet18_gram")


# ---------------------------------------------------------------------------------------------- models
def create(name: str):
    import timm

    import kan_zoo  # noqa: F401  (registers the kan_* models with timm)

    if name not in timm.list_models(name):
        raise LookupError(f"{name} is not registered with timm (yet)")
    return timm.create_model(name, pretrained=False, num_classes=1000)


def count_kan_layers(model: torch.nn.Module) -> int:
    from kan_zoo.layers import Basis

    return sum(isinstance(getattr(m, "basis", None), Basis) for m in model.modules())


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, amp: bool = False) -> int:
    held = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in held:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(amp):
        model(x)
    return sum(seen.values())


def make_train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                    opt: torch.optim.Optimizer, amp: bool) -> Callable[[], None]:
    """One training step: forward (under autocast with --amp) and loss, backward, SGD step."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(amp):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return step


# ---------------------------------------------------------------------------------------------- worker
def measure_training(step: Callable[[], None], opt: torch.optim.Optimizer, device: torch.device, iters: int,
                     out: dict) -> None:
    """CPU: time and peak-RSS growth of the first step. CUDA: peak memory and median time after warm-up."""
    if device.type != "cuda":
        # The first step, in a process that has not run anything yet, so ru_maxrss is this step's peak.
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["train_step_s"] = timed(step, device)
        out["peak_rss"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        return
    for _ in range(warmup_steps(device)):
        step()
    opt.zero_grad(set_to_none=True)  # so the step's own gradients count in its peak
    out["cuda_peak"] = cuda_peak_bytes(step, device)
    out["train_step_s"] = statistics.median(timed(step, device) for _ in range(iters))


def measure_inference(model: torch.nn.Module, x: torch.Tensor, device: torch.device, iters: int,
                      amp: bool) -> float:
    """Median seconds of one no-grad eval batch after the warm-up."""
    model.eval()
    with torch.no_grad(), autocast(amp):
        for _ in range(warmup_steps(device)):
            model(x)
        return statistics.median(timed(lambda: model(x), device) for _ in range(iters))


def compile_cpu_kernels(model: torch.nn.Module, device: torch.device, size: int) -> None:
    """--cpu-kernels: one forward+backward at batch 2 and the real image size (the chunks' shapes, which
    pick the compiled variants, follow the size), so that compiling the kernels is not timed in the first
    training step. It raises the process's peak RSS before the step: the RSS column then understates the
    step's growth."""
    x = torch.randn(2, 3, size, size, device=device)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(2, dtype=torch.long, device=device)).backward()
    model.zero_grad(set_to_none=True)


def worker(name: str, mode: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create(name)
    kan_layers = count_kan_layers(model)
    if mode == "memory_efficient":
        from kan_zoo.layers import set_memory_efficient

        if set_memory_efficient(model) == 0:
            return {"skip": "no KAN layers"}
    if args.triton is not None:
        if kan_layers == 0 and args.triton == "off":
            return {"skip": "no KAN layers"}
        from kan_zoo.layers import set_triton_enabled

        set_triton_enabled(args.triton == "on")
    out: dict = {"kan_layers": kan_layers}
    model.to(device).train()
    x = torch.randn(args.train_batch, 3, args.size, args.size, device=device)
    target = torch.randint(0, 1000, (args.train_batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    if args.cpu_kernels and device.type == "cpu":
        compile_cpu_kernels(model, device, args.size)
    measure_training(make_train_step(model, x, target, opt, args.amp), opt, device, args.iters, out)
    opt.zero_grad(set_to_none=True)
    out["saved"] = saved_bytes(model, x, args.amp)
    if mode == "default":
        xb = torch.randn(args.batch, 3, args.size, args.size, device=device)
        out["images_per_s"] = args.batch / measure_inference(model, xb, device, args.iters, args.amp)
    return out


# ---------------------------------------------------------------------------------------------- parent
def run_child(cmd: List[str], timeout: Optional[float]) -> dict:
    """A worker's JSON result, or {"failed": reason} with its traceback sent to stderr."""
    return run_worker(cmd, timeout, " ".join(cmd[2:]))


def kernels_enabled() -> bool:
    """kan_zoo's Triton switch as the environment left it (True where this kan_zoo has no switch)."""
    try:
        from kan_zoo.layers import triton_enabled
    except ImportError:
        return True
    return triton_enabled()


def header(cuda: bool) -> List[str]:
    if cuda:
        return ["model", "mode", "triton", "inference images/s", "saved for backward MiB",
                "train-step CUDA peak MiB", "train step ms"]
    return ["model", "mode", "inference images/s", "saved for backward MiB", "train-step peak RSS growth MiB",
            "train step s"]


def table_row(name: str, mode: str, triton: Optional[str], r: dict) -> List[str]:
    head = [name, mode] + ([] if triton is None else [triton if r.get("kan_layers", 1) else "-"])
    if "failed" in r:
        blanks = [""] * (len(header(triton is not None)) - len(head) - 1)
        return head + ["failed: " + r["failed"].replace("|", "/")] + blanks
    ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "(same)"
    if triton is None:
        return head + [ips, f"{r['saved'] / 2**20:.0f}", f"{r['peak_rss'] / 2**20:.0f}", f"{r['train_step_s']:.1f}"]
    return head + [ips, f"{r['saved'] / 2**20:.0f}", f"{r['cuda_peak'] / 2**20:.0f}", f"{r['train_step_s'] * 1e3:.1f}"]


def describe(args: argparse.Namespace) -> str:
    if args.device != "cuda":
        return (f"# bench_models: CPU, {args.threads} threads, torch {torch.__version__}; inference batch {args.batch} "
                f"at {args.size} px; one training step (SGD) at batch {args.train_batch}; fresh process per row"
                + cpu_flags_note(args))
    return (f"# bench_models: cuda {torch.cuda.get_device_name()}, torch {torch.__version__}, amp (bf16 autocast) "
            f"{'on' if args.amp else 'off'}, Triton kernels {args.triton}; inference batch {args.batch} at {args.size} "
            f"px, "
            f"median of {args.iters} batches; training step (SGD) at batch {args.train_batch}: median of {args.iters} "
            f"steps, CUDA peak = max_memory_allocated growth over one step (model weights and input not counted); "
            f"{warmup_steps(torch.device('cuda'))} warm-up iterations before each; fresh process per row")


def measure_model(name: str, tritons: List[Optional[str]], args: argparse.Namespace, rows: List[List[str]]) -> None:
    """One fresh worker process per (mode, triton setting) of one model; appends the table rows."""
    kan_free = False  # a model without KAN layers needs neither the memory-efficient nor the triton-off run
    for mode in ("default", "memory_efficient"):
        for triton in tritons:
            if kan_free:
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--mode", mode, "--size",
                   str(args.size), "--batch", str(args.batch), "--train-batch", str(args.train_batch), "--iters",
                   str(args.iters), "--threads", str(args.threads), "--device", args.device]
            cmd += (["--amp"] if args.amp else []) + (["--triton", triton] if triton else []) + cpu_flag_args(args)
            label = f"{name} ({mode}{', triton ' + triton if triton else ''})"
            r = run_child(cmd, args.child_timeout)
            if "skip" in r:
                if mode == "default" or "no KAN" not in r["skip"]:
                    print(f"# skipped {label}: {r['skip']}", flush=True)
                if "no KAN" not in r["skip"]:
                    break  # not registered: once per mode is enough
                kan_free = True
                continue
            rows.append(table_row(name, mode, triton, r))
            kan_free = r.get("kan_layers") == 0
            print(f"#   {label} " + (f"failed: {r['failed']}" if "failed" in r else "done"), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8, help="inference batch")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (matters on cpu only)")
    ap.add_argument("--quick", action="store_true", help="64 px, batch 2: a smoke run")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for every forward (cuda only)")
    ap.add_argument("--triton", choices=("on", "off", "both"), default=None,
                    help="KAN models with the Triton basis kernels on, off or both "
                         "(cuda only; default both, or off under KAN_ZOO_TRITON=0)")
    ap.add_argument("--child-timeout", type=float, default=0,
                    help="seconds before a row's worker process is killed and the row marked failed (0: none)")
    add_cpu_flags(ap)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.train_batch, args.iters = 64, 2, 2, 1
    if args.device != "cuda" and (args.amp or args.triton):
        ap.error("--amp and --triton need --device cuda")
    check_device(args.device)
    torch.set_num_threads(args.threads)

    if args.worker:
        apply_cpu_flags(args)
        try:
            print(json.dumps(worker(args.worker, args.mode, args)))
        except LookupError as e:
            print(json.dumps({"skip": str(e)}))
        return

    cuda = args.device == "cuda"
    if cuda and args.triton is None:  # KAN_ZOO_TRITON=0 in the environment makes the default "off"
        args.triton = "both" if kernels_enabled() else "off"
    tritons: List[Optional[str]] = [None] if not cuda else (["on", "off"] if args.triton == "both" else [args.triton])
    print(describe(args), flush=True)
    rows: List[List[str]] = []
    interrupt_on_sigterm()
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            measure_model(name, tritons, args, rows)
    except KeyboardInterrupt:
        print(f"# interrupted: the table has the {len(rows)} rows finished before", flush=True)
    print()
    print("| " + " | ".join(header(cuda)) + " |")
    print("|" + "|".join("---" for _ in header(cuda)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
