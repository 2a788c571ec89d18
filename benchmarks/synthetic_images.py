"""Deterministic synthetic JPEG datasets for the data-pipeline and training benchmarks.

Pixels are smooth random colour fields (a coarse random grid, bicubic-upsampled) plus fine
grain, saved as JPEG: that compresses and decodes like photographs much more than white noise
would (noise makes files several times larger and slower to decode than ImageNet's). Image k of
a dataset depends only on (seed, split, k), so every run writes the same bytes.

    # the 1000-class folder of the GPU training run (benchmarks/imagenet_train_run.py does this itself)
    python benchmarks/synthetic_images.py --out /tmp/synthetic_in1k --classes 1000 --train-per-class 10 \\
        --val-per-class 1 --width 224 --height 224
"""
from __future__ import annotations

import argparse
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

SPLIT_IDS = {"train": 0, "validation": 1}
# ImageNet-1k's train JPEGs average about 400 x 350 px and 110 KB; 500 x 375 is its most common size.
IMAGENET_LIKE_SIZE = (500, 375)


def synthetic_jpeg(seed: int, split: str, index: int, size: Tuple[int, int], quality: int = 90) -> bytes:
    """The bytes of image ``index`` of ``split``: width x height ``size``, a function of its arguments only."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    width, height = size
    coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    # grain of sd 24: at 500 x 375 and quality 90 the files come out near ImageNet's ~110 KB
    grain = rng.standard_normal((height, width, 3), dtype=np.float32) * 24.0
    pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def class_name(c: int, classes: int) -> str:
    return f"class_{c:0{len(str(classes - 1))}d}"


def _plan(classes: int, per_split: Dict[str, int]) -> List[Tuple[str, int, int]]:
    """(split, class, image index within the split) of every image, in a fixed order."""
    out = []
    for split, per_class in per_split.items():
        for i in range(per_class * classes):
            out.append((split, i % classes, i))
    return out


def _write_one(job: Tuple[str, str, int, int, int, int, Tuple[int, int]]) -> int:
    root, split, c, index, classes, seed, size = job
    path = Path(root) / split / class_name(c, classes) / f"{index:07d}.jpg"
    data = synthetic_jpeg(seed, split, index, size)
    path.write_bytes(data)
    return len(data)


def write_image_folder(root: Path, classes: int, per_split: Dict[str, int], size: Tuple[int, int] = IMAGENET_LIKE_SIZE,
                       seed: int = 0, jobs: int = 1) -> Dict[str, float]:
    """``root/<split>/<class>/<index>.jpg`` with ``per_split[split]`` images per class; returns
    {"images": count, "mean_kib": mean file size}. ``jobs`` > 1 encodes in that many processes."""
    if classes < 1 or any(n < 1 for n in per_split.values()):
        raise ValueError(f"need >= 1 class and >= 1 image per class and split, got {classes} and {per_split}")
    unknown = set(per_split) - set(SPLIT_IDS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; use {sorted(SPLIT_IDS)}")
    for split in per_split:
        for c in range(classes):
            (root / split / class_name(c, classes)).mkdir(parents=True, exist_ok=True)
    plan = [(str(root), split, c, i, classes, seed, tuple(size)) for split, c, i in _plan(classes, per_split)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            sizes = list(pool.map(_write_one, plan, chunksize=64))
    else:
        sizes = [_write_one(job) for job in plan]
    return {"images": len(sizes), "mean_kib": float(np.mean(sizes)) / 1024}


def write_parquet(folder: Path, out: Path, splits: Sequence[str] = ("train", "validation")) -> Path:
    """The image folder as parquet files ``out/<split>-00000-of-00001.parquet`` (image bytes inside,
    a ClassLabel), as datasets writes them and as Hub datasets are published."""
    import datasets

    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (folder / splits[0]).iterdir() if p.is_dir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    for split in splits:
        rows: Dict[str, list] = {"image": [], "label": []}
        for label, name in enumerate(names):
            for path in sorted((folder / split / name).glob("*.jpg")):
                rows["image"].append({"bytes": path.read_bytes(), "path": path.name})
                rows["label"].append(label)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train-per-class", type=int, default=10)
    ap.add_argument("--val-per-class", type=int, default=1)
    ap.add_argument("--width", type=int, default=IMAGENET_LIKE_SIZE[0])
    ap.add_argument("--height", type=int, default=IMAGENET_LIKE_SIZE[1])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="encoding processes")
    ap.add_argument("--parquet", type=Path, default=None, help="also write the folder as parquet here")
    args = ap.parse_args()
    stats = write_image_folder(args.out, args.classes, {"train": args.train_per_class, "validation": args.val_per_class},
                               (args.width, args.height), args.seed, args.jobs)
    print(f"wrote {stats['images']} JPEGs of {args.width}x{args.height} px ({stats['mean_kib']:.0f} KiB mean) "
          f"in {args.classes} classes under {args.out}")
    if args.parquet:
        print(f"parquet: {write_parquet(args.out, args.parquet)}")


if __name__ == "__main__":
    main()
