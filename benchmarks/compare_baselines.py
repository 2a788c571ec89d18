#!/usr/bin/env python
"""The seed's KAN-vs-CNN table on the bundled digits: accuracy, parameters, relative inference time.

    python benchmarks/compare_baselines.py                       # plain conv + gram, chebyshev, bspline, rbf, relu
    python benchmarks/compare_baselines.py --bases gram relu --epochs 10

Each ``kan_simple4_<basis>`` (and the plain-conv twin ``kan_simple4_conv``) is trained with
train_imagenet.py's own code (``kan_zoo.training.main``, one CPU process, no launcher) on
scikit-learn's 8x8 digits written as an image folder (``kan_zoo.demo.write_digits_folder``: 1257
train / 180 validation / 360 test images), upsampled to --img-size. The exported model is reloaded
and scored on the held-out test split; inference time is the median eval-mode forward of one batch,
relative to the plain conv, on this machine's CPU.

Caveats: 1.8k tiny images are far from MNIST or CIFAR. Accuracies within a point or two are one
split's noise (360 test images: one image is 0.28 %), the short schedule favours whichever model
converges fastest rather than the best one, and CPU timings move with machine load.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]


def train_args(model: str, data: Path, out: Path, epochs: int, img_size: int, seed: int) -> List[str]:
    """train_imagenet.py options: the digits demo's recipe, single process, no checkpoints or logs."""
    return [
        "--cpu", "--dataset", str(data), "--model", model, "--img-size", str(img_size), "--crop-pct", "1.0",
        "--epochs", str(epochs), "--batch-size", "32", "--grad-accum", "1", "--workers", "0",
        "--lr", "4e-3", "--weight-decay", "5e-4", "--warmup-steps", "40", "--sched", "poly", "--min-lr", "1e-6",
        "--hflip", "0", "--scale", "0.75", "1", "--ratio", "0.85", "1.15", "--smoothing", "0.05",
        "--model-ema-decay", "0.995", "--checkpoint-steps", "0", "--keep-checkpoints", "1",
        "--log-with", "none", "--no-progress", "--seed", str(seed), "--output", str(out),
    ]


def inference_ms(model: torch.nn.Module, img_size: int, batch: int = 256, repeats: int = 7) -> float:
    """Median milliseconds of one eval-mode forward of ``batch`` images."""
    model.eval()
    x = torch.randn(batch, 1, img_size, img_size)
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def run(bases: Sequence[str], epochs: int, img_size: int, workdir: Path, seed: int) -> List[Dict[str, object]]:
    import timm

    import kan_zoo  # noqa: F401  registers kan_simple4_*
    from kan_zoo.demo import evaluate_folder, write_digits_folder
    from kan_zoo.training import main as train_main

    data = write_digits_folder(workdir / "digits", seed=0)
    rows = []
    for basis in ("conv", *[b for b in bases if b != "conv"]):
        name = f"kan_simple4_{basis}"
        out = workdir / f"{name}_{img_size}px_{epochs}ep_s{seed}"
        timing = out / "train_seconds.txt"
        if not (out / "export" / "config.json").exists() or not timing.exists():
            start = time.time()
            # A run killed earlier resumes from its checkpoints (its train time then counts this part only).
            resume = ["--resume"] if (out / "checkpoints").is_dir() else []
            train_main(train_args(name, data, out, epochs, img_size, seed) + resume)
            timing.write_text(f"{time.time() - start:.1f}")
        train_s = float(timing.read_text())  # a finished run is reused, with its own time
        acc, n = evaluate_folder(out / "export", data, "test")
        model = timm.create_model(name, num_classes=10, in_chans=1)
        params = sum(p.numel() for p in model.parameters())
        rows.append(dict(model=name, accuracy=acc, test_images=n, params=params,
                         ms=inference_ms(model, img_size), train_s=train_s))
        print(f"{name}: {acc:.2f}% test accuracy, {params / 1e6:.2f}M parameters, trained in {train_s:.0f}s",
              flush=True)
    base_ms = rows[0]["ms"]
    for r in rows:
        r["relative_time"] = r["ms"] / base_ms
    return rows


def table(rows: List[Dict[str, object]], img_size: int) -> str:
    lines = [f"| model | test accuracy (%) | parameters | inference time vs conv ({img_size} px, CPU) "
             "| train time (s) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['accuracy']:.2f} | {r['params']:,} | {r['relative_time']:.2f}x | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bases", nargs="+", default=["gram", "chebyshev", "bspline", "rbf", "relu"],
                   help="KAN bases to compare with the plain conv")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", default="outputs/compare_baselines")
    args = p.parse_args(argv)
    start = time.time()
    rows = run(args.bases, args.epochs, args.img_size, Path(args.workdir).resolve(), args.seed)
    print()
    print(table(rows, args.img_size))
    print(f"\n{rows[0]['test_images']} test digits; wall time {time.time() - start:.0f}s", flush=True)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
