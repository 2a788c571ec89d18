"""torch.compile at model level (issue 7): one training step of a timm model, eager against compiled.

Each (model, graph mode) runs in a fresh process: the model is compiled (inductor), two compiled
steps are run and timed together ("compile s": tracing, code generation, first runs), then eager and
compiled steps are timed in interleaved rounds, each round the median of --iters steps, and the table
quotes the median over rounds and the per-round range of eager / compiled ("speed-up").

Graph modes: "one graph" is kan_zoo's default (the KAN layers' plain ops in the graph, only the
wavelet's chunked node called outside it); "eager node" sets KANConvNd.compile_calls_eager_node = True
(the separable layers' fused node called from the graph behind graph breaks).

    python benchmarks/bench_compile.py --models kan_resnet18_gram,kan_densenet121_gram --size 64 --batch 4
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import List

import torch
from _bench_common import add_cpu_flags, apply_cpu_flags, cpu_flag_args, cpu_flags_note, run_worker

GRAPH_MODES = ("one graph", "eager node")


def worker(args: argparse.Namespace) -> dict:
    import timm

    import kan_zoo  # noqa: F401  (registers the kan_* models with timm)
    from kan_zoo.layers import KANConvNd

    if args.graph == "eager node":
        KANConvNd.compile_calls_eager_node = True
    torch.manual_seed(0)
    model = timm.create_model(args.worker, pretrained=False, num_classes=100).train()
    compiled = torch.compile(model)
    x = torch.randn(args.batch, 3, args.size, args.size)

    def step(module: torch.nn.Module) -> float:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        module(x).sum().backward()
        return time.perf_counter() - start

    start = time.perf_counter()
    step(compiled)
    step(compiled)
    compile_s = time.perf_counter() - start
    step(model)  # eager warm-up
    rounds = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for name, module in (("eager", model), ("compiled", compiled)):
            rounds[name].append(statistics.median(step(module) for _ in range(args.iters)))
    return {"compile_s": compile_s, **rounds}


def row(name: str, graph: str, r: dict) -> List[str]:
    if "failed" in r:
        return [name, graph, "failed: " + r["failed"].replace("|", "/"), "", "", "", ""]
    eager, compiled = statistics.median(r["eager"]), statistics.median(r["compiled"])
    per_round = [e / c for e, c in zip(r["eager"], r["compiled"])]
    return [name, graph, f"{r['compile_s']:.0f}", f"{eager * 1e3:.0f}", f"{compiled * 1e3:.0f}",
            f"{eager / compiled:.2f}", f"{min(per_round):.2f}-{max(per_round):.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="kan_resnet18_gram,kan_densenet121_gram")
    ap.add_argument("--graphs", default=",".join(GRAPH_MODES), help=f"comma-separated, of {GRAPH_MODES}")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=4, help="interleaved rounds")
    ap.add_argument("--iters", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child-timeout", type=float, default=0, help="seconds per (model, graph mode); 0: none")
    add_cpu_flags(ap)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--graph", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        apply_cpu_flags(args)
        print(json.dumps(worker(args)))
        return
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    unknown = [g for g in graphs if g not in GRAPH_MODES]
    if unknown:
        ap.error(f"unknown graph modes {unknown}; choose from {GRAPH_MODES}")
    print(f"# bench_compile: training step (forward + backward), batch {args.batch}, {args.size} px, CPU, "
          f"{args.threads} threads, torch {torch.__version__}; {args.repeats} interleaved rounds x {args.iters} "
          f"steps, medians; one fresh process per (model, graph mode)" + cpu_flags_note(args), flush=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for graph in graphs:
            cmd = [sys.executable, __file__, "--worker", name, "--graph", graph, "--size", str(args.size),
                   "--batch", str(args.batch), "--repeats", str(args.repeats), "--iters", str(args.iters),
                   "--threads", str(args.threads)] + cpu_flag_args(args)
            rows.append(row(name, graph, run_worker(cmd, args.child_timeout, f"{name} ({graph})")))
            print("#   " + " | ".join(rows[-1]), flush=True)
    header = ["model", "graph", "compile s", "eager ms", "compiled ms", "speed-up", "per round"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
