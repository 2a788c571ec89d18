"""Data: Hugging Face datasets in (Hub, image folder, save_to_disk folder, parquet), checked early.

Splits, columns and labels are checked before any training: a label column may hold integer class
ids, a ClassLabel, or class names (strings), which are mapped to ids in sorted order - the same on
every process and on every resume, since it depends on the training split's label values only.
Rows become batches in images.py.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .images import (BadImage, Collate, ImageClassificationDataset, RowSampler, build_transforms, decode_image,
                     sample_seed)

__all__ = [
    "DataError", "DataBundle", "load_data", "ImageClassificationDataset", "RowSampler", "BadImage",
    "Collate", "decode_image", "build_transforms", "sample_seed",
]

_ONE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "F", "P"}


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
    label_ids: Optional[Dict[str, int]] = None  # class name -> id when the labels are strings
    label_note: str = ""  # how the classes were found, for the log


def _missing_path_hint(dataset: str) -> str:
    path = Path(dataset).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    try:
        siblings = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        siblings = []
    close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.6)
    return f"; did you mean {[str(parent / c) for c in close]}?" if close else ""


def _resolve_format(dataset: str, fmt: str) -> str:
    path = Path(dataset).expanduser()
    if fmt == "hub":
        return fmt
    if fmt != "auto":
        if not path.exists():
            raise DataError(f"dataset path {str(path)!r} does not exist{_missing_path_hint(dataset)}")
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
        raise DataError(f"dataset path {str(path)!r} does not exist{_missing_path_hint(dataset)}")
    return "hub"


def _hub_unreachable(args: Any, error: Exception) -> DataError:
    """A Hub id that failed: say first that it is no local path either (a misspelt folder looks like an id)."""
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    where = "the Hub cannot be reached while offline (HF_HUB_OFFLINE=1) and it is not in the local cache" \
        if offline else "not found on the Hugging Face Hub nor in the local cache"
    hint = _missing_path_hint(args.dataset)
    return DataError(f"no local path {args.dataset!r} exists (looked in {os.getcwd()}){hint}, "
                     f"and no Hub dataset of that name could be reached: {where} ({type(error).__name__}: {error})")


def _load_splits(args: Any, fmt: str) -> Tuple[Dict[str, Any], List[str]]:
    """Returns ({split: dataset} for the train and val splits, all available split names)."""
    import datasets

    wanted = [args.train_split, args.val_split]
    common = dict(cache_dir=args.cache_dir)
    if fmt == "hub":
        try:
            names = datasets.get_dataset_split_names(args.dataset, args.dataset_config)
        except Exception as e:  # offline and not cached, private, misspelt...
            raise _hub_unreachable(args, e) from e
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
        if args.streaming:  # several shards, so that each process can read its own (split_dataset_by_node)
            shards = int(os.environ.get("WORLD_SIZE", "1")) * max(1, args.workers)
            loaded = {k: v.to_iterable_dataset(num_shards=max(1, min(shards, len(v)))) for k, v in loaded.items()}
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


def _kind(feature: Any) -> str:
    """What a column holds, in words (for messages)."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "images"
    if isinstance(feature, datasets.ClassLabel):
        return f"class labels ({feature.num_classes} names)"
    if isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
        return "images (bytes and path)"
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "strings"
    if dtype is not None and ("int" in dtype):
        return "integers"
    if dtype is not None:
        return dtype
    return type(feature).__name__


def _holds_images(feature: Any) -> bool:
    return _kind(feature).startswith("images")


def _check_columns(args: Any, splits: Dict[str, Any]) -> None:
    for split, ds in splits.items():
        cols = _columns(ds)
        for flag, col in (("--image-column", args.image_column), ("--label-column", args.label_column)):
            if col not in cols:
                raise DataError(f"column {col!r} ({flag}) not found in split {split!r} of {args.dataset!r}; "
                                f"available columns: {cols}")
        features = ds.features or {}
        if not features:
            continue
        listing = ", ".join(f"{c!r} ({_kind(f)})" for c, f in features.items())
        label_kind = _kind(features[args.label_column])
        if _holds_images(features[args.label_column]):
            raise DataError(f"--label-column {args.label_column!r} holds images, not class labels; the columns of "
                            f"{args.dataset!r} are {listing}")
        image_kind = _kind(features[args.image_column])
        if not _holds_images(features[args.image_column]) and image_kind != "strings":  # strings: file paths
            raise DataError(f"--image-column {args.image_column!r} holds {image_kind}, not images; the columns "
                            f"of {args.dataset!r} are {listing}")
        if not (label_kind.startswith("class labels") or label_kind in ("integers", "strings")):
            raise DataError(f"--label-column {args.label_column!r} holds {label_kind}; it must hold integer class "
                            f"ids, class names (strings) or a ClassLabel. The columns of {args.dataset!r} are "
                            f"{listing}")


def _label_values(ds: Any, column: str, streaming: bool) -> List[Any]:
    if not streaming:
        return list(ds.unique(column))
    seen = set()  # a stream has no unique(): read the label column once (the images are not decoded)
    for row in ds.select_columns([column]):
        seen.add(row[column])
    return list(seen)


def _labels(args: Any, train: Any, val: Any) -> Tuple[int, Optional[List[str]], Optional[Dict[str, int]], str]:
    """(num_classes, label names, {name: id} for string labels, a line for the log)."""
    import datasets

    col = args.label_column
    feature = (train.features or {}).get(col)
    if isinstance(feature, datasets.ClassLabel):
        if args.num_classes is not None and args.num_classes != feature.num_classes:
            raise DataError(f"--num-classes {args.num_classes} but the label column {col!r} has "
                            f"{feature.num_classes} classes")
        note = f"{feature.num_classes} classes found in label column {col!r} (a ClassLabel)"
        return feature.num_classes, list(feature.names), None, note
    if args.num_classes is not None and _kind(feature) == "integers":
        return args.num_classes, None, None, f"{args.num_classes} classes (--num-classes)"
    if args.streaming and _kind(feature) == "integers":
        raise DataError(f"label column {col!r} holds integers but no class count; pass --num-classes with "
                        f"--streaming")
    values = _label_values(train, col, args.streaming)
    if any(v is None for v in values):
        raise DataError(f"label column {col!r} of split {args.train_split!r} has rows without a label")
    if all(isinstance(v, str) for v in values):
        names = sorted(values)  # sorted: the same ids on every process and on every resume
        if args.num_classes is not None and args.num_classes != len(names):
            raise DataError(f"--num-classes {args.num_classes} but the label column {col!r} holds {len(names)} "
                            f"class names")
        unknown = sorted(set(_label_values(val, col, args.streaming)) - set(names), key=str)
        if unknown:
            raise DataError(f"split {args.val_split!r} has labels that split {args.train_split!r} never uses: "
                            f"{unknown[:10]}")
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return len(names), names, {n: i for i, n in enumerate(names)}, \
            f"{len(names)} classes found in label column {col!r} (names, ids in sorted order: {shown})"
    if not all(isinstance(v, (int, np.integer)) for v in values):
        raise DataError(f"label column {col!r} must hold integer class ids or class names (strings), found e.g. "
                        f"{values[:3]!r}")
    if min(values) < 0:
        raise DataError(f"label column {col!r} holds negative class ids (e.g. {min(values)})")
    n = int(max(values)) + 1
    return n, None, None, f"{n} classes (largest class id in {col!r} + 1)"


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
    num_classes, label_names, label_ids, note = _labels(args, train, val)
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
    return DataBundle(train, val, num_classes, in_chans, label_names, train_len, val_len, args.streaming,
                      label_ids, note)


def _split_size(ds: Any, split: str) -> Optional[int]:
    info = getattr(ds, "info", None)
    splits = getattr(info, "splits", None) or {}
    entry = splits.get(split) if hasattr(splits, "get") else None
    return getattr(entry, "num_examples", None) or None
