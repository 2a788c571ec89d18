"""Data-pipeline throughput (issue 20): images/s per DataLoader worker beside the model's training step.

How many loader workers does a GPU need? This measures what one worker delivers - JPEG decode plus
timm's training transform at --img-size (create_transform(is_training=True) with train_imagenet.py's
defaults: RandomResizedCrop scale 0.08-1, horizontal flip, normalisation) - from an image folder
and from parquet, and what the model's training step consumes at the same batch size. The data
path is the script's own: its parser's defaults, kan_zoo.training.data.load_data,
build_transforms and setup.map_loaders (the DataLoader train_imagenet.py trains from, before
accelerate shards it).

Data: --images synthetic JPEGs of --width x --height (500 x 375 by default, ImageNet's most common
size; about 110 KB each, see synthetic_images.py), in --classes class folders, written into a
temporary folder and also as one parquet file (image bytes inside); deterministic. The split is
repeated as often as a timed run needs, so the files sit in the page cache: disk reads are not
measured, decoding and transforming are.

Timing: for each source and each --workers count, a fresh loader; its first max(1, workers) batches
are dropped (worker start-up), then --batches-per-worker x max(1, workers) batches are timed.
workers = 0 is the main process doing the work itself, with one torch thread, so that its figure
is a one-core one like a worker's. The model's training step (benchmarks/bench_train_throughput.py's
TrainStep: forward, loss, backward, clipping, AdamW, at the same batch) is timed in the same
rounds, interleaved with the loaders, so both see the same machine load; each figure is the median
over --rounds rounds.

  images/s per worker = images/s / max(1, workers)
  workers needed      = the model's training images/s / images/s per worker

    python benchmarks/bench_data_pipeline.py [--workers 0,1,2,4,8] [--device cuda] [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from _bench_common import in_workdir
from bench_train_throughput import TrainStep, create
from synthetic_images import write_image_folder, write_parquet

SOURCES = ("image folder", "parquet")


# ---------------------------------------------------------------------------------------------- data
def script_args(dataset: Path, model: str, workers: int, batch: int, img_size: int, cache: Path):
    """train_imagenet.py's options for this source, defaults otherwise."""
    from kan_zoo.training.config import parse_args

    return parse_args(["--model", model, "--dataset", str(dataset), "--workers", str(workers), "--batch-size",
                       str(batch), "--img-size", str(img_size), "--cache-dir", str(cache)])


class Source:
    """One dataset opened the way train_imagenet.py opens it, its transform built from the model."""

    def __init__(self, path: Path, model: torch.nn.Module, model_name: str, batch: int, img_size: int,
                 cache: Path, device: torch.device):
        from kan_zoo.training.data import build_transforms, load_data

        self.path, self.model_name, self.batch, self.img_size, self.cache = path, model_name, batch, img_size, cache
        self.pin = device.type == "cuda"
        args = script_args(path, model_name, 0, batch, img_size, cache)
        self.data = load_data(args)
        self.train_tf, self.eval_tf, self.cfg = build_transforms(args, model, self.data.in_chans)

    def loader(self, workers: int, images_needed: int):
        """The script's train DataLoader with ``workers`` workers over enough repeats of the split."""
        import datasets

        from kan_zoo.training.setup import map_loaders

        args = script_args(self.path, self.model_name, workers, self.batch, self.img_size, self.cache)
        repeats = math.ceil(images_needed / len(self.data.train)) + 1
        data = dataclasses.replace(self.data, train=datasets.concatenate_datasets([self.data.train] * repeats))
        _, train_loader, _ = map_loaders(args, data, self.train_tf, self.eval_tf, tuple(self.cfg["input_size"]),
                                         even=False, pin_memory=self.pin)
        return train_loader


def time_loader(loader: Any, skip: int, timed: int) -> Tuple[int, float]:
    """(images, seconds) of ``timed`` batches after ``skip`` dropped ones."""
    it = iter(loader)
    try:
        for _ in range(skip):
            next(it)
        start = time.perf_counter()
        images = sum(len(next(it)["label"]) for _ in range(timed))
        return images, time.perf_counter() - start
    finally:
        del it  # shuts the workers down


def measure_source(source: Source, workers: int, per_worker: int) -> Dict[str, float]:
    skip, timed = max(1, workers), per_worker * max(1, workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers run with one thread each; the main process does too, for workers = 0
    try:
        images, seconds = time_loader(source.loader(workers, (skip + timed + 1) * source.batch), skip, timed)
    finally:
        torch.set_num_threads(threads)
    return {"images": images, "seconds": seconds}


# ---------------------------------------------------------------------------------------------- table
def summarise(data_runs: Dict[Tuple[str, int], List[Dict[str, float]]],
              model_runs: Dict[str, List[float]], batch: int) -> Dict[str, Any]:
    """Medians over rounds and the derived columns."""
    models = {name: {"step_s": statistics.median(w), "images_per_s": batch / statistics.median(w)}
              for name, w in model_runs.items()}
    rows = []
    for (source, workers), runs in data_runs.items():
        ips = statistics.median(r["images"] / r["seconds"] for r in runs)
        per_worker = ips / max(1, workers)
        needed = {name: m["images_per_s"] / per_worker for name, m in models.items()}
        rows.append({"source": source, "workers": workers, "images_per_s": ips, "per_worker": per_worker,
                     "workers_needed": needed})
    return {"rows": rows, "models": models}


def format_tables(summary: Dict[str, Any], batch: int) -> str:
    names = list(summary["models"])
    head = ["source", "workers", "images/s", "images/s per worker"] + [f"workers needed: {n}" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        workers = "0 (main process)" if r["workers"] == 0 else str(r["workers"])
        cells = [r["source"], workers, f"{r['images_per_s']:.1f}", f"{r['per_worker']:.1f}"]
        cells += [f"{r['workers_needed'][n]:.2f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | batch | training step s | training images/s |", "|---|---|---|---|"]
    for n, m in summary["models"].items():
        lines.append(f"| {n} | {batch} | {m['step_s']:.3f} | {m['images_per_s']:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="0,1,2", help="comma-separated loader worker counts")
    ap.add_argument("--models", default="kan_resnet18_gram,resnet18",
                    help="models whose training step is timed; the first one's data config builds the transform")
    ap.add_argument("--batch-size", type=int, default=32, help="loader batch and model batch")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=256, help="synthetic JPEGs written (training split)")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--batches-per-worker", type=int, default=6, help="timed batches per worker (per run)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model step runs")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast in the model step (default: on for cuda)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="NHWC model step (default: on for cuda)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the model step")
    ap.add_argument("--workdir", default=None, help="where the synthetic data goes (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write the measurements and the table's figures here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 24 images of 160 x 120, 64 px, batch 4, workers 0,1, kan_test_resnet_gram, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.classes, args.width, args.height, args.img_size = 24, 3, 160, 120, 64
        args.batch_size, args.rounds, args.batches_per_worker = 4, 1, 2
        args.workers = "0,1" if args.workers == ap.get_default("workers") else args.workers
        args.models = "kan_test_resnet_gram" if args.models == ap.get_default("models") else args.models
    args.worker_list = [int(w) for w in args.workers.split(",") if w.strip()]
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.worker_list or min(args.worker_list) < 0:
        ap.error(f"--workers needs counts >= 0, got {args.workers!r}")
    if not args.model_list:
        ap.error("--models needs at least one model")
    if args.images < args.batch_size:
        ap.error(f"--images {args.images} is fewer than one batch ({args.batch_size})")
    for flag in ("amp", "channels_last"):
        if getattr(args, flag) is None:
            setattr(args, flag, args.device == "cuda")
    return args


def run(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    import datasets

    datasets.disable_progress_bars()
    device = torch.device(args.device)
    per_class = max(1, args.images // args.classes)
    stats = write_image_folder(work / "folder", args.classes, {"train": per_class, "validation": 1},
                               (args.width, args.height))
    paths = {"image folder": work / "folder", "parquet": write_parquet(work / "folder", work / "parquet")}
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # the machine's load, for the header: a shared machine slows everything
    models = {n: create(n, device, args.channels_last) for n in args.model_list}
    first = args.model_list[0]
    sources = {s: Source(p, models[first], first, args.batch_size, args.img_size, work / "cache", device)
               for s, p in paths.items()}
    steps = {n: TrainStep(m, args.batch_size, args.img_size, device, args.amp, args.channels_last, False)
             for n, m in models.items()}
    for step in steps.values():
        step.window(1)  # warm-up
    data_runs: Dict[Tuple[str, int], List[Dict[str, float]]] = {(s, w): [] for s in SOURCES for w in args.worker_list}
    model_runs: Dict[str, List[float]] = {n: [] for n in steps}
    for r in range(args.rounds):
        for (source, workers), runs in data_runs.items():
            runs.append(measure_source(sources[source], workers, args.batches_per_worker))
            print(f"#   round {r + 1}: {source}, {workers} workers: {runs[-1]['images'] / runs[-1]['seconds']:.1f} "
                  f"images/s", flush=True)
        for name, step in steps.items():
            model_runs[name].append(step.window(1))
            print(f"#   round {r + 1}: {name} training step {model_runs[name][-1]:.3f} s", flush=True)
    summary = summarise(data_runs, model_runs, args.batch_size)
    cfg = sources["image folder"].cfg
    summary.update(setting={
        "images": per_class * args.classes, "mean_kib": stats["mean_kib"], "size": [args.width, args.height],
        "img_size": args.img_size, "batch": args.batch_size, "interpolation": cfg["interpolation"],
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "threads": args.threads,
        "amp": args.amp, "channels_last": args.channels_last, "torch": torch.__version__, "rounds": args.rounds,
        "cores": os.cpu_count(), "load": [load_before, os.getloadavg()[0]]},
        data_runs=[{"source": s, "workers": w, "runs": runs} for (s, w), runs in data_runs.items()],
        model_runs=model_runs)
    return summary


def describe(s: Dict[str, Any], args: argparse.Namespace) -> str:
    st = s["setting"]
    where = (f"{st['device']}, bf16 autocast {'on' if st['amp'] else 'off'}, channels_last "
             f"{'on' if st['channels_last'] else 'off'}") if args.device == "cuda" else f"CPU, {st['threads']} threads"
    return (f"# bench_data_pipeline: {st['images']} synthetic JPEGs of {st['size'][0]}x{st['size'][1]} px "
            f"({st['mean_kib']:.0f} KiB mean); timm train transform at {st['img_size']} px ({st['interpolation']}); "
            f"batch {st['batch']}; model step on {where}; torch {st['torch']}; medians of {st['rounds']} interleaved "
            f"rounds; {st['cores']} cores, load average {st['load'][0]:.1f} before, {st['load'][1]:.1f} after")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; use --device cpu")
    summary = in_workdir(args.workdir, "bench_data_pipeline_", lambda work: run(args, work))
    print(describe(summary, args))
    print()
    print(format_tables(summary, args.batch_size))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
