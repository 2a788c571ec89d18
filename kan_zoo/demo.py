"""The README's first command: train a KAN conv net on handwritten digits with two CPU processes.

    python -m kan_zoo.demo

1. writes scikit-learn's bundled digits (1797 8x8 images, no download) as an image folder with
   train / validation / test splits (fixed seed);
2. runs ``accelerate launch --multi_gpu --num_processes 2 train_imagenet.py ...`` on the CPU
   (gloo), streaming its progress;
3. reloads the exported folder with ``timm.create_model("local-dir:...", pretrained=True)`` and
   prints its accuracy on the held-out test split.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["write_digits_folder", "evaluate_folder", "main"]

ROOT = Path(__file__).resolve().parents[1]


def write_digits_folder(root: Path, seed: int = 0) -> Path:
    """digits -> root/{train,validation,test}/<digit>/<n>.png (8x8 grayscale); stratified 70/10/20 split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if (root / "test").is_dir() and (root / ".complete").exists():
        return root  # written by an earlier run with the same seed
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    idx = np.arange(len(images))
    rest, test = train_test_split(idx, test_size=0.2, random_state=seed, stratify=digits.target)
    train, val = train_test_split(rest, test_size=0.125, random_state=seed, stratify=digits.target[rest])
    for split, ids in (("train", train), ("validation", val), ("test", test)):
        for i in ids:
            d = root / split / str(digits.target[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(d / f"{i:04d}.png")
    (root / ".complete").write_text(str(seed))
    return root


def evaluate_folder(export_dir: Path, data_dir: Path, split: str = "test") -> tuple:
    """(accuracy %, n) of the exported model on data_dir/split, preprocessing from its config.json."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    import kan_zoo  # noqa: F401  registers kan_* so the exported architecture resolves

    model = timm.create_model(f"local-dir:{export_dir}", pretrained=True).eval()
    cfg = resolve_data_config(model=model)
    tf = create_transform(**cfg)
    mode = "L" if cfg["input_size"][0] == 1 else "RGB"
    names = model.pretrained_cfg.get("label_names") or sorted(p.name for p in (data_dir / split).iterdir())
    xs, ys = [], []
    for label, name in enumerate(names):
        for f in sorted((data_dir / split / str(name)).glob("*.png")):
            xs.append(tf(Image.open(f).convert(mode)))
            ys.append(label)
    with torch.no_grad():
        pred = torch.cat([model(torch.stack(xs[i:i + 256])).argmax(1) for i in range(0, len(xs), 256)])
    acc = 100.0 * (pred == torch.tensor(ys)).float().mean().item()
    return acc, len(ys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(data: Path, out: Path, args: argparse.Namespace) -> List[str]:
    script = ROOT / "train_imagenet.py"
    target = [str(script)] if script.is_file() else ["-m", "kan_zoo.training"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu",
        "--num_processes", str(args.processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *target,
        "--cpu", "--dataset", str(data), "--model", args.model, "--img-size", str(args.img_size),
        "--crop-pct", "1.0",
        "--epochs", str(args.epochs), "--batch-size", "32", "--grad-accum", "1", "--workers", "0",
        "--lr", "4e-3", "--weight-decay", "5e-4", "--warmup-steps", "40", "--sched", "poly", "--min-lr", "1e-6",
        "--hflip", "0", "--scale", "0.75", "1", "--ratio", "0.85", "1.15", "--smoothing", "0.05",
        "--model-ema-decay", "0.995", "--checkpoint-steps", "0", "--keep-checkpoints", "1",
        "--log-every", "10", "--output", str(out),
    ]


def main(argv: Optional[Sequence[str]] = None) -> float:
    p = argparse.ArgumentParser(prog="python -m kan_zoo.demo", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="outputs/digits_demo", help="data, checkpoints and the export go here")
    p.add_argument("--model", default="kan_test_vgg_gram")
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="train/validation/test split seed")
    args = p.parse_args(argv)

    start = time.time()
    work = Path(args.workdir).resolve()
    data = write_digits_folder(work / "digits", seed=args.seed)
    out = work / f"run_{args.model}_{args.img_size}px_{args.epochs}ep"
    resume = ["--resume"] if (out / "checkpoints").is_dir() else []
    cmd = train_command(data, out, args) + resume
    print("$ CUDA_VISIBLE_DEVICES= accelerate launch " + " ".join(cmd[3:]), flush=True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.setdefault("HF_DATASETS_CACHE", str(work / "hf_cache"))
    rc = subprocess.run(cmd, env=env).returncode  # inherits stdout/stderr: progress streams live
    if rc != 0:
        raise SystemExit(f"training failed (exit code {rc})")
    acc, n = evaluate_folder(out / "export", data, "test")
    print(f"\nreloaded {out / 'export'} with timm.create_model('local-dir:...', pretrained=True)")
    print(f"test accuracy: {acc:.2f}% on {n} held-out digits; wall time {time.time() - start:.0f}s", flush=True)
    return acc


if __name__ == "__main__":
    main()
