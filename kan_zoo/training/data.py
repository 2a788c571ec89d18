"""Data: Hugging Face datasets in, timm transforms on, unreadable images skipped and counted.

Every sample's augmentation is seeded from (seed, epoch, index) so that it does not depend on
worker count, process count, or where a resumed run restarted: that is what makes a killed and
resumed run end with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import io
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DataError", "DataBundle", "load_data", "ImageClassificationDataset", "StreamingImageDataset",
    "Collate", "decode_image", "build_transforms", "sample_seed",
]

_log = logging.getLogger(__name__)
_ONE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "F", "P"}
_WARN_LIMIT = 10


class DataError(ValueError):
    """Bad data arguments: missing dataset/path, split or column; raised before training starts."""


@dataclass
class DataBundle:
    train: Any  # datasets.Dataset or datasets.IterableDataset (streaming)
    val: Any
    num_classes: int
    in_chans: int
    label_names: Optional[List[str]]
    train_len: int
    val_len: Optional[int]
    streaming: bool


def _resolve_format(dataset: str, fmt: str) -> str:
    path = Path(dataset).expanduser()
    if fmt == "hub":
        return fmt
    if fmt != "auto":
        if not path.exists():
            raise DataError(f"dataset path {str(path)!r} does not exist")
        return fmt
    if path.exists():
        if path.is_file():
            if path.suffix == ".parquet":
                return "parquet"
            raise DataError(f"dataset {str(path)!r} is a file but not a .parquet file; pass a folder")
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "disk"
        if next(path.rglob("*.parquet"), None) is not None:
            return "parquet"
        return "imagefolder"
    # Hub ids are "name" or "owner/name"; anything else that looks like a path is a missing path.
    looks_like_path = (dataset.startswith((".", "/", "~")) or dataset.count("/") > 1
                       or (os.sep != "/" and os.sep in dataset))
    if looks_like_path or Path(dataset).suffix in (".parquet", ".arrow"):
        raise DataError(f"dataset path {str(path)!r} does not exist")
    return "hub"


def _load_splits(args: Any, fmt: str) -> Tuple[Dict[str, Any], List[str]]:
    """Returns ({split: dataset} for the train and val splits, all available split names)."""
    import datasets

    wanted = [args.train_split, args.val_split]
    common = dict(cache_dir=args.cache_dir)
    if fmt == "hub":
        try:
            names = datasets.get_dataset_split_names(args.dataset, args.dataset_config)
        except Exception as e:  # offline and not cached, private, misspelt...
            raise DataError(f"could not find dataset {args.dataset!r} on the Hugging Face Hub or in the local "
                            f"cache ({type(e).__name__}: {e})") from e
        _check_splits(args, names)
        try:
            splits = {s: datasets.load_dataset(args.dataset, args.dataset_config, split=s,
                                               streaming=args.streaming, **common) for s in dict.fromkeys(wanted)}
        except Exception as e:
            raise DataError(f"could not load dataset {args.dataset!r}: {type(e).__name__}: {e}") from e
        return splits, list(names)
    path = str(Path(args.dataset).expanduser())
    if fmt == "disk":
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        if args.streaming:
            loaded = {k: v.to_iterable_dataset() for k, v in loaded.items()}
    else:
        builder_kwargs = dict(data_files=path) if Path(path).is_file() else dict(data_dir=path)
        try:
            loaded = datasets.load_dataset(fmt, streaming=args.streaming, **builder_kwargs, **common)
        except Exception as e:
            raise DataError(f"could not read {fmt} data from {path!r}: {type(e).__name__}: {e}") from e
    names = list(loaded.keys())
    _check_splits(args, names)
    return {s: loaded[s] for s in dict.fromkeys(wanted)}, names


def _check_splits(args: Any, names: Sequence[str]) -> None:
    for flag, split in (("--train-split", args.train_split), ("--val-split", args.val_split)):
        if split not in names:
            raise DataError(f"split {split!r} ({flag}) not found in dataset {args.dataset!r}; "
                            f"available splits: {sorted(names)}")


def _columns(ds: Any) -> List[str]:
    if ds.column_names is not None:
        return list(ds.column_names)
    return list(next(iter(ds)).keys())  # streaming data without declared features: peek


def _check_columns(args: Any, splits: Dict[str, Any]) -> None:
    for split, ds in splits.items():
        cols = _columns(ds)
        for flag, col in (("--image-column", args.image_column), ("--label-column", args.label_column)):
            if col not in cols:
                raise DataError(f"column {col!r} ({flag}) not found in split {split!r} of {args.dataset!r}; "
                                f"available columns: {cols}")


def _num_classes(args: Any, train: Any) -> Tuple[int, Optional[List[str]]]:
    import datasets

    feature = (train.features or {}).get(args.label_column)
    if isinstance(feature, datasets.ClassLabel):
        if args.num_classes is not None and args.num_classes != feature.num_classes:
            raise DataError(f"--num-classes {args.num_classes} but the label column {args.label_column!r} has "
                            f"{feature.num_classes} classes")
        return feature.num_classes, list(feature.names)
    if args.num_classes is not None:
        return args.num_classes, None
    if args.streaming:
        raise DataError(f"label column {args.label_column!r} is not a ClassLabel; pass --num-classes with --streaming")
    labels = train.unique(args.label_column)
    if not all(isinstance(v, (int, np.integer)) for v in labels):
        raise DataError(f"label column {args.label_column!r} must hold integer class ids (or be a ClassLabel), "
                        f"found e.g. {labels[:3]!r}")
    return int(max(labels)) + 1, None


def _guess_in_chans(args: Any, train: Any) -> int:
    """1 when the first readable training images are all single-channel, else 3 (RGB)."""
    if args.in_chans is not None:
        return args.in_chans
    modes = []
    rows = iter(train) if args.streaming else (train[i] for i in range(min(len(train), 64)))
    for row in rows:
        try:
            modes.append(decode_image(row[args.image_column], None).mode)
        except Exception:
            continue
        if len(modes) >= 8:
            break
    if not modes:
        raise DataError(f"none of the first training images in {args.dataset!r} could be read")
    return 1 if all(m in _ONE_CHANNEL_MODES for m in modes) else 3


def load_data(args: Any) -> DataBundle:
    """Open the train and val splits and check splits, columns and labels; raises DataError when wrong."""
    import datasets

    fmt = _resolve_format(args.dataset, args.data_format)
    splits, _ = _load_splits(args, fmt)
    _check_columns(args, splits)
    # Decode ourselves, so that a corrupt image is a skipped sample rather than an exception.
    splits = {k: v.cast_column(args.image_column, datasets.Image(decode=False)) for k, v in splits.items()}
    train, val = splits[args.train_split], splits[args.val_split]
    num_classes, label_names = _num_classes(args, train)
    in_chans = _guess_in_chans(args, train)
    if args.streaming:
        train_len = args.train_samples or _split_size(train, args.train_split)
        if not train_len:
            raise DataError("the streamed dataset does not say how many training samples it has; pass --train-samples")
        val_len = _split_size(val, args.val_split)
    else:
        train_len, val_len = len(train), len(val)
        if train_len == 0:
            raise DataError(f"split {args.train_split!r} of {args.dataset!r} is empty")
    return DataBundle(train, val, num_classes, in_chans, label_names, train_len, val_len, args.streaming)


def _split_size(ds: Any, split: str) -> Optional[int]:
    info = getattr(ds, "info", None)
    splits = getattr(info, "splits", None) or {}
    entry = splits.get(split) if hasattr(splits, "get") else None
    return getattr(entry, "num_examples", None) or None


def decode_image(value: Any, mode: Optional[str]) -> Image.Image:
    """Open one image cell (bytes/path dict, path, bytes or PIL image) fully, converted to ``mode``."""
    if isinstance(value, Image.Image):
        img = value
    else:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        elif isinstance(value, (bytes, bytearray)):
            data, path = value, None
        else:
            data, path = None, value
        if data is None:
            if not path:
                raise ValueError("image cell holds neither bytes nor a path")
            try:
                from datasets.utils.file_utils import xopen  # also reads hf:// and other remote paths
            except ImportError:  # pragma: no cover
                xopen = open
            with xopen(path, "rb") as f:
                data = f.read()
        img = Image.open(io.BytesIO(data))
    img.load()  # force the full decode here, where failures are caught
    return img.convert(mode) if mode and img.mode != mode else img


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class _Sampler:
    """Shared decode-and-transform of one row; returns (tensor or None, label)."""

    def __init__(self, image_column: str, label_column: str, transform: Callable, mode: str, seed: int):
        self.image_column, self.label_column = image_column, label_column
        self.transform, self.mode, self.seed = transform, mode, seed
        self.epoch = 0
        self._warned = 0

    def process(self, row: Dict[str, Any], index: int) -> Tuple[Optional[torch.Tensor], int]:
        _seed_all(sample_seed(self.seed, self.epoch, index))
        label = int(row[self.label_column])
        try:
            return self.transform(decode_image(row[self.image_column], self.mode)), label
        except Exception as e:  # unreadable/corrupt: skipped and counted by the collate
            if self._warned < _WARN_LIMIT:
                self._warned += 1
                cell = row[self.image_column]
                where = cell.get("path") if isinstance(cell, dict) else None
                _log.warning("skipping unreadable image #%d %s: %s: %s", index, where or "", type(e).__name__, e)
            return None, label


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Map-style view of a datasets.Dataset giving (image tensor or None, label)."""

    def __init__(self, hf: Any, image_column: str, label_column: str, transform: Callable, mode: str, seed: int):
        self.hf = hf
        self.sampler = _Sampler(image_column, label_column, transform, mode, seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch  # picked up by workers: they are re-created every epoch

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], int]:
        return self.sampler.process(self.hf[index], index)


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """Iterable view of a (node-split) datasets.IterableDataset; datasets itself shards over workers."""

    def __init__(self, hf: Any, image_column: str, label_column: str, transform: Callable, mode: str, seed: int):
        self.hf = hf
        self.sampler = _Sampler(image_column, label_column, transform, mode, seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch
        if hasattr(self.hf, "set_epoch"):
            self.hf.set_epoch(epoch)  # reshuffles the stream deterministically

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        offset, stride = (info.id, info.num_workers) if info else (0, 1)
        for k, row in enumerate(self.hf):
            yield self.sampler.process(row, offset + k * stride)


class Collate:
    """Batches (tensor or None, label) pairs; counts unreadable samples.

    Training (``drop_bad``): unreadable samples are dropped; an all-bad batch becomes a pair of
    zero images with ``valid`` 0 so every process still runs its forward/backward (DDP would hang
    otherwise). Evaluation: bad samples become zero images with ``valid`` False so that batch sizes,
    and hence gather_for_metrics' de-duplication, stay right.
    """

    def __init__(self, sample_shape: Tuple[int, int, int], drop_bad: bool, even: bool = False):
        self.sample_shape, self.drop_bad, self.even = sample_shape, drop_bad, even

    def __call__(self, batch: List[Tuple[Optional[torch.Tensor], int]]) -> Dict[str, torch.Tensor]:
        n_bad = sum(x is None for x, _ in batch)
        if self.drop_bad:
            good = [(x, y) for x, y in batch if x is not None]
            if self.even and len(good) % 2:
                good = good[:-1]  # mixup/cutmix pair samples up
            if not good:
                zeros = torch.zeros(2, *self.sample_shape)
                return dict(image=zeros, label=torch.zeros(2, dtype=torch.long),
                            valid=torch.zeros(2, dtype=torch.bool), n_bad=torch.tensor(n_bad))
            xs, ys = zip(*good)
            return dict(image=torch.stack(xs), label=torch.tensor(ys, dtype=torch.long),
                        valid=torch.ones(len(xs), dtype=torch.bool), n_bad=torch.tensor(n_bad))
        zeros = torch.zeros(*self.sample_shape)
        return dict(image=torch.stack([zeros if x is None else x for x, _ in batch]),
                    label=torch.tensor([y for _, y in batch], dtype=torch.long),
                    valid=torch.tensor([x is not None for x, _ in batch]), n_bad=torch.tensor(n_bad))


def build_transforms(args: Any, model: torch.nn.Module, in_chans: int) -> Tuple[Callable, Callable, Dict[str, Any]]:
    """timm train/eval transforms and the resolved data config (saved with the exported model)."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(dict(img_size=args.img_size, in_chans=in_chans, mean=args.mean, std=args.std,
                                   crop_pct=args.crop_pct, interpolation=args.interpolation), model=model)
    for key in ("mean", "std"):  # e.g. ImageNet RGB stats on a grayscale dataset: average them
        if len(cfg[key]) != in_chans:
            cfg[key] = tuple([float(np.mean(cfg[key]))] * in_chans)
    common = dict(input_size=cfg["input_size"], interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])
    train_tf = create_transform(
        **common, is_training=True, scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip,
        color_jitter=args.color_jitter or None, auto_augment=args.auto_augment, re_prob=args.reprob)
    eval_tf = create_transform(**common, is_training=False, crop_pct=cfg["crop_pct"])
    return train_tf, eval_tf, cfg
