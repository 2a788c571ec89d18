"""Model-level cost of KAN convs (issue 7): inference images/s and the memory of one training step.

For kan_vgg11_gram, kan_vgg11_bottleneck_gram and kan_resnet18_gram beside timm's resnet18, in the
default and the memory-efficient mode (kan_zoo.layers.set_memory_efficient). Every (model, mode)
runs in a fresh process; models that are not registered yet are skipped with a message.

  images/s : eval mode, no grad, --batch images at --size px, median of --iters timed batches
             (memory-efficient mode changes nothing without grad, so it is measured once);
  saved    : bytes of the activations autograd keeps for backward in one training forward
             (saved_tensors_hooks, parameters excluded), batch --train-batch;
  peak RSS : process peak-RSS growth over one full training step (forward, backward, SGD step).

    python benchmarks/bench_models.py [--models kan_vgg11_gram,resnet18] [--size 224] [--quick]
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
from typing import Dict, List

import torch

MODELS = ("resnet18", "kan_vgg11_gram", "kan_vgg11_bottleneck_gram", "kan_resnet18_gram")


def create(name: str):
    import timm

    import kan_zoo  # noqa: F401  (registers the kan_* models with timm)

    if name not in timm.list_models(name):
        raise LookupError(f"{name} is not registered with timm (yet)")
    return timm.create_model(name, pretrained=False, num_classes=1000)


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    held = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in held:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def worker(name: str, mode: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = create(name)
    if mode == "memory_efficient":
        from kan_zoo.layers import set_memory_efficient

        if set_memory_efficient(model) == 0:
            return {"skip": "no KAN layers"}
    out: dict = {}
    # Training step first, in a process that has not run anything yet, so ru_maxrss is this step's peak.
    model.train()
    x = torch.randn(args.train_batch, 3, args.size, args.size)
    target = torch.randint(0, 1000, (args.train_batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    opt.step()
    out["train_step_s"] = time.perf_counter() - t
    out["peak_rss"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    del loss
    opt.zero_grad(set_to_none=True)
    out["saved"] = saved_bytes(model, x)
    if mode == "default":
        model.eval()
        xb = torch.randn(args.batch, 3, args.size, args.size)
        times: List[float] = []
        with torch.no_grad():
            model(xb)  # warm-up
            for _ in range(args.iters):
                t = time.perf_counter()
                model(xb)
                times.append(time.perf_counter() - t)
        out["images_per_s"] = args.batch / statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8, help="inference batch")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="64 px, batch 2: a smoke run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.train_batch, args.iters = 64, 2, 2, 1
    torch.set_num_threads(args.threads)

    if args.worker:
        try:
            print(json.dumps(worker(args.worker, args.mode, args)))
        except LookupError as e:
            print(json.dumps({"skip": str(e)}))
        return

    print(f"# bench_models: CPU, {args.threads} threads, torch {torch.__version__}; inference batch {args.batch} "
          f"at {args.size} px; one training step (SGD) at batch {args.train_batch}; fresh process per row", flush=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for mode in ("default", "memory_efficient"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--mode", mode, "--size", str(args.size),
                   "--batch", str(args.batch), "--train-batch", str(args.train_batch), "--iters", str(args.iters),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(f"# {name} ({mode}) failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if "skip" in r:
                if mode == "default" or "no KAN" not in r["skip"]:
                    print(f"# skipped {name} ({mode}): {r['skip']}", flush=True)
                continue
            ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "(same)"
            rows.append([name, mode, ips, f"{r['saved'] / 2**20:.0f}", f"{r['peak_rss'] / 2**20:.0f}",
                         f"{r['train_step_s']:.1f}"])
            print(f"#   {name} ({mode}) done", flush=True)
    header = ["model", "mode", "inference images/s", "saved for backward MiB", "train-step peak RSS growth MiB",
              "train step s"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
