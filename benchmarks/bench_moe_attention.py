"""What the mixture-of-experts and attention KAN blocks cost against one KAN conv of the same shape (issue 21).

Yardsticks, measured in the same process and the same interleaved rounds as the blocks:
  plain: nn.Conv2d(C, C, 3) + BatchNorm2d + SiLU;
  kan:   KANConv2d(C, C, 3), Gram basis, degree 3 (the one KAN conv every block is built of).
Blocks (C -> C, 3x3 where there is a kernel, Gram degree 3, training mode, so MoE gating is noisy):
  moe_e<E>_k<k>: MoEKANConv2d with E experts, k per sample (k = E: dense); moe_bn_e4_k2 with bottleneck experts;
  attention: KANSelfAttention2d (3x3 q/k/v KAN convs); attention_inner: with a 1x1 inner projection to C/4;
  attention_rope: with 2D rotary embedding; focal: KANFocalModulation2d(window 3, level 2).

Method: every variant runs one forward+backward per step; in each round the variants run one after the
other (plain, kan, moe_..., plain, kan, ...), a round's figure for a variant is the median of --iters
steps, and the table quotes the median over --repeats rounds, as ratios to kan and to plain. "noise"
is the largest max/min of one variant's round figures (above ~1.15 the machine was busy). Memory
("saved") is the bytes of the tensors autograd keeps for backward in one forward (saved_tensors_hooks,
parameters excluded; bench_layers.saved_bytes), deterministic.

    python benchmarks/bench_moe_attention.py                 # batch 8, 32 channels, 28x28
    python benchmarks/bench_moe_attention.py --quick --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable, Dict, List, Tuple

import torch
from _bench_common import interrupt_on_sigterm, sync, timed, warmup_steps
from bench_layers import fmt, make_step, mib, ratio, saved_bytes
from torch import nn

def _layers():
    from kan_zoo import layers

    return layers


def _moe(num_experts: int, top_k: int, **options) -> Callable[[int], nn.Module]:
    return lambda c: _layers().MoEKANConv2d(c, c, 3, padding=1, num_experts=num_experts, top_k=top_k, **options)


# variant -> builder of a C -> C module
BUILDERS: Dict[str, Callable[[int], nn.Module]] = {
    "plain": lambda c: nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.SiLU()),
    "kan": lambda c: _layers().KANConv2d(c, c, 3, padding=1),
    "moe_e4_k1": _moe(4, 1),
    "moe_e4_k2": _moe(4, 2),
    "moe_e8_k2": _moe(8, 2),
    "moe_e4_k4": _moe(4, 4),
    "moe_bn_e4_k2": _moe(4, 2, bottleneck=True),
    "attention": lambda c: _layers().KANSelfAttention2d(c, 3),
    "attention_inner": lambda c: _layers().KANSelfAttention2d(c, 3, inner_channels=c // 4),
    "attention_rope": lambda c: _layers().KANSelfAttention2d(c, 3, rope=True),
    "focal": lambda c: _layers().KANFocalModulation2d(c),
}


def measure(names: List[str], n: int, c: int, size: int, repeats: int, iters: int) -> Tuple[dict, dict]:
    """(round figures per variant, saved bytes per variant), interleaved rounds in this process."""
    device = torch.device("cpu")
    steps, saved, rounds = {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        module = BUILDERS[name](c).train()
        x = torch.randn(n, c, size, size, requires_grad=True)
        saved[name] = saved_bytes(module, lambda module=module, x=x: module(x))
        steps[name] = make_step(module, x, name, amp=False)
        for _ in range(warmup_steps(device)):
            steps[name]()
        rounds[name] = []
    try:
        for _ in range(repeats):
            for name, step in steps.items():
                step()  # re-warm caches after the previous variant
                rounds[name].append(statistics.median(timed(step, device) for _ in range(iters)))
                sync(device)
    except KeyboardInterrupt:
        print("# interrupted: the table covers the rounds finished so far")
    return rounds, saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 4, 16 channels, 14x14")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--iters", type=int, default=5, help="steps per variant and round")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--variants", default=",".join(BUILDERS), help=f"comma-separated subset of {','.join(BUILDERS)}")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(BUILDERS)}")
    for yardstick in ("kan", "plain"):
        if yardstick not in names:
            names.insert(0, yardstick)
    n, c, size = (4, 16, 14) if args.quick else (8, 32, 28)
    rounds, saved = measure(names, n, c, size, args.repeats, args.iters)
    med = {v: statistics.median(r) for v, r in rounds.items() if r}
    print(f"# CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; batch {n}, {c} -> {c} channels, "
          f"{size}x{size}, Gram degree 3, train mode, forward+backward; {args.repeats} interleaved rounds x "
          f"{args.iters} steps")
    print("| block | ms | time / kan | time / plain | saved MiB | saved / kan | saved / plain | noise |")
    print("|---|---|---|---|---|---|---|---|")
    for v in names:
        noise = max(rounds[v]) / min(rounds[v]) if rounds[v] else None
        print(f"| {v} | {fmt(med[v] * 1e3 if v in med else None, '.1f')} | {fmt(ratio(med.get(v), med.get('kan')))} | "
              f"{fmt(ratio(med.get(v), med.get('plain')))} | {fmt(mib(saved[v]), '.2f')} | "
              f"{fmt(ratio(saved[v], saved['kan']))} | {fmt(ratio(saved[v], saved['plain']))} | {fmt(noise)} |")


if __name__ == "__main__":
    main()
