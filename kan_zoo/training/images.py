"""From dataset rows to batches: decode, timm transforms, unreadable images recorded by file.

Every sample's augmentation is seeded from (seed, epoch, index) so that it does not depend on
worker count, process count, or where a resumed run restarted: that is what makes a killed and
resumed run end with the same weights as an uninterrupted one.

An image that cannot be decoded is skipped, not fatal. It is recorded as a ``BadImage`` whose
``key`` identifies the file (a map-style row index, or for streamed rows the path and a hash of
the bytes), so that the run names each bad file once and counts files, not encounters.
"""
from __future__ import annotations

import hashlib
import io
import random
import re
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = ["Sample", "BadImage", "decode_image", "sample_seed", "RowSampler", "ImageClassificationDataset", "Collate",
           "build_transforms"]


class Sample(NamedTuple):
    image: Optional[torch.Tensor]  # None when unreadable
    label: int
    bad: Optional["BadImage"]
    id: str  # the image's path where the data has one, else its row index (logs, test hooks)


class BadImage(NamedTuple):
    key: str  # identifies the file across epochs and processes
    name: str  # what the user is told: the path, else the row
    reason: str  # the decoder's complaint


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


def _bad_image(cell: Any, path: Optional[str], index: int, stable_index: bool, error: Exception) -> BadImage:
    reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", f"{type(error).__name__}: {error}")
    if stable_index:  # map-style: the row index is the file's identity
        return BadImage(str(index), f"{path} (row {index})" if path else f"row {index}", reason)
    data = cell.get("bytes") if isinstance(cell, dict) else cell if isinstance(cell, (bytes, bytearray)) else None
    digest = hashlib.sha1(data).hexdigest()[:16] if data else ""
    return BadImage(f"{path}|{digest}", path or f"an unnamed image (sha1 {digest})", reason)


class RowSampler:
    """Shared decode-and-transform of one row into a Sample."""

    def __init__(self, image_column: str, label_column: str, transform: Callable, mode: str, seed: int,
                 label_ids: Optional[Mapping[str, int]] = None, stable_index: bool = True):
        self.image_column, self.label_column = image_column, label_column
        self.transform, self.mode, self.seed = transform, mode, seed
        self.label_ids = label_ids  # class name -> id, for string labels (data.LabelInfo)
        self.stable_index = stable_index
        self.epoch = 0

    def label(self, value: Any) -> int:
        return self.label_ids[value] if self.label_ids is not None else int(value)

    def process(self, row: Dict[str, Any], index: int) -> Sample:
        _seed_all(sample_seed(self.seed, self.epoch, index))
        label = self.label(row[self.label_column])
        cell = row[self.image_column]
        path = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
        sample_id = path or str(index)
        try:
            return Sample(self.transform(decode_image(cell, self.mode)), label, None, sample_id)
        except Exception as e:  # unreadable/corrupt: skipped, and named once by the training loop
            return Sample(None, label, _bad_image(cell, path, index, self.stable_index, e), sample_id)


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Map-style view of a datasets.Dataset giving Samples."""

    def __init__(self, hf: Any, image_column: str, label_column: str, transform: Callable, mode: str, seed: int,
                 label_ids: Optional[Mapping[str, int]] = None):
        self.hf = hf
        self.sampler = RowSampler(image_column, label_column, transform, mode, seed, label_ids)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch  # picked up by workers: they are re-created every epoch

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, index: int):
        return self.sampler.process(self.hf[index], index)


class Collate:
    """Batches Samples; ``bad`` lists the unreadable ones, ``ids`` the samples kept.

    Training (``drop_bad``): unreadable samples are dropped; an all-bad batch becomes a pair of
    zero images with ``valid`` 0 so every process still runs its forward/backward (DDP would hang
    otherwise). Evaluation: bad samples become zero images with ``valid`` False so that batch sizes,
    and hence gather_for_metrics' de-duplication, stay right.
    """

    def __init__(self, sample_shape: Tuple[int, int, int], drop_bad: bool, even: bool = False):
        self.sample_shape, self.drop_bad, self.even = sample_shape, drop_bad, even

    def __call__(self, batch: List[Sample]) -> Dict[str, Any]:
        bad = [s.bad for s in batch if s.bad is not None]
        if self.drop_bad:
            good = [s for s in batch if s.image is not None]
            if self.even and len(good) % 2:
                good = good[:-1]  # mixup/cutmix pair samples up
            if not good:
                zeros = torch.zeros(2, *self.sample_shape)
                return dict(image=zeros, label=torch.zeros(2, dtype=torch.long),
                            valid=torch.zeros(2, dtype=torch.bool), bad=bad, ids=[])
            return dict(image=torch.stack([s.image for s in good]),
                        label=torch.tensor([s.label for s in good], dtype=torch.long),
                        valid=torch.ones(len(good), dtype=torch.bool), bad=bad, ids=[s.id for s in good])
        zeros = torch.zeros(*self.sample_shape)
        return dict(image=torch.stack([zeros if s.image is None else s.image for s in batch]),
                    label=torch.tensor([s.label for s in batch], dtype=torch.long),
                    valid=torch.tensor([s.image is not None for s in batch]), bad=bad, ids=[s.id for s in batch])


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
