"""Training throughput (issue 20): images/s and peak memory of whole training steps, eager and compiled.

What ImageNet costs follows from these figures (benchmarks/imagenet_cost.py turns them into GPU-hours).
A step is what train_imagenet.py does per batch with its default recipe, on synthetic input: forward
under bf16 autocast (--amp; CUDA default), cross entropy with the script's label smoothing, backward,
gradient clipping at the script's --clip-grad, and the script's optimizer (AdamW, lr 9e-4, weight decay
5e-6, built by timm's create_optimizer_v2 as the script builds it), 1000 classes. --channels-last (the
default) puts weights and input in NHWC. Data loading is not in it: benchmarks/bench_data_pipeline.py
measures that, and benchmarks/imagenet_train_run.py the whole loop.

Each (model, eager | compiled) runs in a fresh process, which then measures every --batches size in
turn (compiled: torch._dynamo.reset() and a fresh torch.compile per size, so each size gets static
shapes as a single-size training run would). Per size: --warmup steps (for compiled, they include
compilation: "first steps s"), then --rounds windows of --steps steps, each window bracketed by
torch.cuda.synchronize(); images/s = batch x steps / the median window. Peak memory: CUDA
max_memory_allocated over the timed windows (weights, gradients, optimizer state, activations,
workspaces: what the GPU has to hold) and max_memory_reserved (what the caching allocator took);
on CPU the process's peak RSS. A failing size (out of memory, say) becomes a "failed" row; the others go on.

    python benchmarks/bench_train_throughput.py --device cuda --batches 64,128 --compile both --json runs.jsonl
    python benchmarks/bench_train_throughput.py --device cpu --tiny --models kan_test_vgg_gram  # seconds
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch
from _bench_common import check_device, interrupt_on_sigterm, run_worker, sync

MODELS = ("kan_vgg11_gram", "kan_vgg11_bottleneck_gram", "kan_vgg11_slim_gram", "kan_resnet18_gram",
          "kan_resnet50_gram", "resnet18", "resnet50")


# ---------------------------------------------------------------------------------------------- one step
def recipe():
    """train_imagenet.py's defaults (optimizer, lr, smoothing, clipping), from its own parser."""
    from kan_zoo.training.config import parse_args

    return parse_args(["--model", "any"])  # the model name does not change a default


class TrainStep:
    """One training step of ``model`` at a fixed batch, the way train_imagenet.py's loop takes it."""

    def __init__(self, model: torch.nn.Module, batch: int, size: int, device: torch.device, amp: bool,
                 channels_last: bool, compiled: bool, backend: str = "inductor", num_classes: int = 1000):
        from timm.optim import create_optimizer_v2

        args = recipe()
        self.model, self.device, self.amp, self.batch = model, device, amp, batch
        self.smoothing, self.clip = args.smoothing, args.clip_grad
        self.optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                             momentum=args.momentum)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, size, size, generator=gen).to(device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
        if compiled:
            torch._dynamo.reset()  # static shapes for this batch size, as a one-size training run has
            self.forward = torch.compile(model, backend=backend)
        else:
            self.forward = model

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.forward(self.x)
        loss = torch.nn.functional.cross_entropy(out.float(), self.y, label_smoothing=self.smoothing)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()

    def window(self, steps: int) -> float:
        """Wall seconds of ``steps`` steps, the device's queued work included."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self()
        sync(self.device)
        return time.perf_counter() - start


def peak_memory(device: torch.device) -> Dict[str, float]:
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure(step: TrainStep, warmup: int, steps: int, rounds: int) -> dict:
    """images/s from the median of ``rounds`` timed windows, after ``warmup`` steps."""
    first = step.window(warmup) if warmup else 0.0
    reset_peak(step.device)
    windows = [step.window(steps) for _ in range(rounds)]
    median = statistics.median(windows)
    return {"batch": step.batch, "first_steps_s": first, "window_s": windows, "steps": steps,
            "images_per_s": step.batch * steps / median, "step_ms": 1e3 * median / steps, **peak_memory(step.device)}


def create(name: str, device: torch.device, channels_last: bool, num_classes: int = 1000) -> torch.nn.Module:
    import timm

    import kan_zoo  # noqa: F401  (registers the kan_* models with timm)

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ---------------------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's train.py: fixed shapes, so autotune once
    model = create(args.worker, device, args.channels_last)
    out: dict = {"params": sum(p.numel() for p in model.parameters()), "results": []}
    for batch in args.batch_list:
        step = None
        try:
            step = TrainStep(model, batch, args.size, device, args.amp, args.channels_last,
                             args.variant == "compiled", args.compile_backend)
            out["results"].append(measure(step, args.warmup, args.steps, args.rounds))
        except Exception as e:  # out of memory at the larger batch, say: report it, try the next size
            print(f"# {args.worker} batch {batch}: {type(e).__name__}: {e}", file=sys.stderr)
            out["results"].append({"batch": batch, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        del step
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------- parent
HEADER = ["model", "graph", "batch", "images/s", "step ms", "first steps s", "peak MiB", "reserved MiB"]


def row(r: dict) -> List[str]:
    head = [r["model"], r["variant"], str(r["batch"])]
    if "failed" in r:
        return head + ["failed: " + r["failed"].replace("|", "/")] + [""] * (len(HEADER) - len(head) - 1)
    reserved = f"{r['reserved_mib']:.0f}" if "reserved_mib" in r else "-"
    return head + [f"{r['images_per_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['first_steps_s']:.1f}",
                   f"{r['peak_mib']:.0f}", reserved]


def context(args: argparse.Namespace) -> dict:
    """What every result line records about the setting it was measured in."""
    device = (torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.threads} threads)")
    triton = None
    if args.device == "cuda":
        from kan_zoo.layers import triton_enabled

        triton = triton_enabled()
    return {"device": device, "torch": torch.__version__, "size": args.size, "amp": args.amp,
            "channels_last": args.channels_last, "triton": triton, "source": "bench_train_throughput"}


def describe(args: argparse.Namespace) -> str:
    ctx = context(args)
    return (f"# bench_train_throughput: {ctx['device']}, torch {ctx['torch']}, {args.size} px, "
            f"bf16 autocast {'on' if args.amp else 'off'}, channels_last {'on' if args.channels_last else 'off'}"
            + (f", Triton KAN kernels {'on' if ctx['triton'] else 'off'}" if args.device == "cuda" else "")
            + f"; train_imagenet.py's optimizer and loss; {args.warmup} warm-up steps, median of {args.rounds} "
              f"windows x {args.steps} steps; peak = max memory allocated over the timed steps; fresh process "
              f"per (model, graph)")


def worker_command(name: str, variant: str, args: argparse.Namespace) -> List[str]:
    """The command line of the worker process measuring (name, variant) with the parent's settings."""
    return [sys.executable, os.path.abspath(__file__), "--worker", name, "--variant", variant, "--device",
            args.device, "--batches", args.batches, "--size", str(args.size), "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--rounds", str(args.rounds), "--threads", str(args.threads),
            "--compile-backend", args.compile_backend, "--amp" if args.amp else "--no-amp",
            "--channels-last" if args.channels_last else "--no-channels-last"]


def run_model(name: str, variant: str, args: argparse.Namespace) -> List[dict]:
    got = run_worker(worker_command(name, variant, args), args.child_timeout, f"{name} ({variant})")
    base = {"model": name, "variant": variant, **context(args)}
    if "failed" in got:
        return [{**base, "batch": b, "failed": got["failed"]} for b in args.batch_list]
    return [{**base, "params": got["params"], **r} for r in got["results"]]


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="64,128", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="off",
                    help="eager rows, torch.compile rows, or both (eager first)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend ('eager': a quick check)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on for cuda, off for cpu)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed window")
    ap.add_argument("--rounds", type=int, default=3, help="timed windows")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--child-timeout", type=float, default=0, help="seconds per (model, graph) process; 0: none")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file")
    ap.add_argument("--tiny", action="store_true",
                    help="rehearsal of the whole path (e.g. on a CPU): 64 px (kan_vgg11's smallest), batch 2, one "
                         "step per phase; --models as given")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="eager", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tiny:  # the models stay: their names and building are part of what a rehearsal checks
        args.size, args.batches, args.warmup, args.steps, args.rounds = 64, "2", 1, 1, 1
    args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    if not args.batch_list or min(args.batch_list) < 1:
        ap.error(f"--batches needs positive sizes, got {args.batches!r}")
    if args.amp is None:
        args.amp = args.device == "cuda"
    return args


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse(argv)
    check_device(args.device)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args)))
        return []
    variants = {"off": ["eager"], "on": ["compiled"], "both": ["eager", "compiled"]}[args.compile]
    print(describe(args), flush=True)
    rows: List[dict] = []
    interrupt_on_sigterm()
    try:
        for variant in variants:
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                got = run_model(name, variant, args)
                rows += got
                if args.json:
                    with open(args.json, "a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in got)
                for r in got:
                    print("#   " + " | ".join(row(r)), flush=True)
    except KeyboardInterrupt:
        print(f"# interrupted: the table has the {len(rows)} rows finished before", flush=True)
    print("\n| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER))
    for r in rows:
        print("| " + " | ".join(row(r)) + " |")
    return rows


if __name__ == "__main__":
    main()
