"""What PEFT (kan_zoo.peft) costs per training step against full fine-tuning of the same model.

    python benchmarks/bench_peft.py [--model kan_resnet18_gram] [--img-size 64] [--batch 8] [--device cpu]

One process, one copy of the model per configuration (same weights), timed in interleaved rounds so that load
on a shared machine hits every configuration alike; each step is forward + backward + AdamW step. Printed per
configuration, as ratios to full fine-tuning:
  * step time (median over the rounds);
  * bytes autograd saves for backward (distinct storages, via saved_tensors_hooks: the activation memory);
  * bytes of gradients + optimizer state (what only the trainable parameters cost);
  * on CUDA, the allocator's peak over a step.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import check_device, cuda_peak_bytes, sync, timed  # noqa: E402

import timm  # noqa: E402

import kan_zoo  # noqa: E402,F401
from kan_zoo import peft  # noqa: E402

CONFIGS: Dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "full fine-tune": lambda m: m,
    "head only": lambda m: _head_only(m),
    "peft E=1": lambda m: peft.wrap_model(m, extra_degrees=1),
    "peft E=1, deltas 0,1, base": lambda m: peft.wrap_model(m, extra_degrees=1, trainable_degrees=(0, 1),
                                                            train_base=True),
    "peft E=2, deltas 2 (beta)": lambda m: peft.wrap_model(m, extra_degrees=2, trainable_degrees=(2,)),
}


def _head_only(model: torch.nn.Module) -> torch.nn.Module:
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    return model


def saved_bytes(step: Callable[[], None]) -> int:
    """Bytes of the distinct storages autograd keeps for backward during ``step``'s forward."""
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    states = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return grads + states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="kan_resnet18_gram")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    check_device(args.device)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = timm.create_model(args.model, num_classes=10).to(device).train()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    target = torch.randint(0, 10, (args.batch,), device=device)

    runs = {}
    for name, configure in CONFIGS.items():
        model = configure(copy.deepcopy(base))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def forward(model=model):
            return torch.nn.functional.cross_entropy(model(x), target)

        def step(model=model, opt=opt, forward=forward):
            opt.zero_grad(set_to_none=True)
            forward().backward()
            opt.step()

        step()  # warm-up: optimizer state, caches
        runs[name] = dict(step=step, forward=forward, model=model, opt=opt,
                          trainable=sum(p.numel() for p in params), times=[])
    for _ in range(args.rounds):
        for run in runs.values():
            run["times"].append(timed(run["step"], device))
    for run in runs.values():
        run["saved"] = saved_bytes(lambda run=run: run["forward"]().backward())
        run["state"] = state_bytes(run["model"], run["opt"])
        run["peak"] = cuda_peak_bytes(run["step"], device) if device.type == "cuda" else None
        sync(device)

    ref = runs["full fine-tune"]
    t_ref = statistics.median(ref["times"])
    print(f"{args.model}, batch {args.batch} x {args.img_size} px, {args.device}, {args.rounds} interleaved rounds; "
          f"full fine-tune: {t_ref * 1e3:.1f} ms/step, {ref['saved'] / 2**20:.1f} MiB saved for backward, "
          f"{ref['state'] / 2**20:.1f} MiB grads + AdamW state")
    cols: List[str] = ["configuration", "trainable params", "step time", "saved for backward", "grads + opt state"]
    cols += ["CUDA peak"] if device.type == "cuda" else []
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for name, run in runs.items():
        row = [name, f"{run['trainable']:,} ({run['trainable'] / ref['trainable']:.3f})",
               f"{statistics.median(run['times']) / t_ref:.2f}x", f"{run['saved'] / ref['saved']:.2f}x",
               f"{run['state'] / ref['state']:.3f}x"]
        if run["peak"] is not None:
            row.append(f"{run['peak'] / ref['peak']:.2f}x")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
