"""A short real train_imagenet.py run on a synthetic ImageNet-shaped folder: the whole loop's images/s.

Writes a deterministic folder of --classes classes (1000 by default) x --train-per-class JPEGs of
--image-size px (synthetic_images.py), trains --model on it with train_imagenet.py itself for
--epochs epochs (a few hundred updates at most: the default 10 000 images / batch 128 x 2 epochs = 156),
bf16 and channels-last on CUDA, EMA on as in the recipe, then reads the run's metrics.csv:
train/images_per_s is logged every --log-every updates (training batches only: loading,
forward, backward, clipping, optimizer, EMA; validation and the epoch checkpoints excluded);
the first window (cuDNN autotuning, compilation, workers starting) is dropped and the median of
the others reported, with the run's peak memory (train/peak_memory_mib: CUDA max_memory_allocated,
on CPU the peak RSS). --json appends the result as a line benchmarks/imagenet_cost.py reads.

    python benchmarks/imagenet_train_run.py --device cuda --model kan_vgg11_gram --workers 14 --json runs.jsonl
    python benchmarks/imagenet_train_run.py --tiny     # CPU, seconds: the same path at 10 classes, 32 px
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from _bench_common import in_workdir
from synthetic_images import write_image_folder


def train_argv(args: argparse.Namespace, data: Path, out: Path) -> List[str]:
    """train_imagenet.py's command line for this run."""
    argv = ["--dataset", str(data), "--model", args.model, "--output", str(out), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--grad-accum", "1", "--img-size", str(args.img_size),
            "--workers", str(args.workers), "--log-every", str(args.log_every), "--warmup-steps", str(args.warmup_steps),
            "--checkpoint-steps", "0", "--keep-checkpoints", "1", "--no-progress", "--log-with", "csv",
            "--cache-dir", str(out.parent / "datasets_cache")]
    if args.device == "cpu":
        argv.append("--cpu")
    else:
        argv += ["--mixed-precision", "bf16"]
    if args.channels_last:
        argv.append("--channels-last")
    if args.compile:
        argv.append("--compile")
    return argv


def summarise(metrics_csv: Path) -> Dict[str, Any]:
    """Median images/s over the logged windows after the first, and the largest peak memory logged."""
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("train/images_per_s")]
    if not rows:
        raise SystemExit(f"{metrics_csv} has no train/images_per_s: too few updates for one --log-every window")
    rates = [float(r["train/images_per_s"]) for r in rows]
    steady = rates[1:] or rates
    return {"images_per_s": statistics.median(steady), "windows": len(steady), "first_window_images_per_s": rates[0],
            "peak_mib": max(float(r["train/peak_memory_mib"]) for r in rows), "updates": int(float(rows[-1]["step"]))}


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kan_vgg11_gram")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train-per-class", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=224, help="side of the synthetic JPEGs")
    ap.add_argument("--img-size", type=int, default=224, help="training resolution (train_imagenet.py --img-size)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=50, help="lr warmup (the recipe's 7500 is longer than the run)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workdir", default=None, help="data and run folder (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="append the result to this JSON-lines file")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke test: kan_test_vgg_gram, 10 classes x 4 images of 32 px, batch 4, 2 epochs")
    args = ap.parse_args(argv)
    if args.tiny:
        args.device, args.classes, args.train_per_class, args.image_size, args.img_size = "cpu", 10, 4, 32, 32
        args.batch_size, args.epochs, args.workers, args.log_every, args.warmup_steps = 4, 2, 0, 2, 2
        args.model = "kan_test_vgg_gram" if args.model == ap.get_default("model") else args.model
    return args


def run(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    from kan_zoo.training import main as train

    start = time.perf_counter()
    data = work / "synthetic_in1k"
    stats = write_image_folder(data, args.classes, {"train": args.train_per_class, "validation": 1},
                               (args.image_size, args.image_size), jobs=os.cpu_count() or 1)
    written = time.perf_counter() - start
    out = work / "run"
    train(train_argv(args, data, out))
    result = {"source": "train_imagenet.py", "model": args.model, "variant": "compiled" if args.compile else "eager",
              "batch": args.batch_size, "img_size": args.img_size, "device": args.device,
              "amp": args.device == "cuda", "channels_last": args.channels_last, "workers": args.workers,
              "images": stats["images"], "mean_kib": stats["mean_kib"], "data_write_s": written,
              "wall_s": time.perf_counter() - start, **summarise(out / "logs" / "train" / "metrics.csv")}
    if args.device == "cuda":
        import torch

        result["device"] = torch.cuda.get_device_name()
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse(argv)
    result = in_workdir(args.workdir, "imagenet_train_run_", lambda work: run(args, work))
    print(f"{result['model']} on {result['device']}: {result['images_per_s']:.1f} training images/s through "
          f"train_imagenet.py (median of {result['windows']} windows of {args.log_every} updates at batch "
          f"{result['batch']}; first window {result['first_window_images_per_s']:.1f}), peak memory "
          f"{result['peak_mib']:.0f} MiB, {result['updates']} updates, {result['wall_s']:.0f} s in all "
          f"({result['data_write_s']:.0f} s writing {result['images']} images)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
