"""--streaming: each process reads its own shard, and a killed run resumes where its stream was.

* Sharding: ``datasets.distributed.split_dataset_by_node`` gives every process its own files when
  their number divides evenly (else every process reads the stream and keeps every N-th row).
* Position: torchdata's ``StatefulDataLoader`` keeps, per loader worker, the ``state_dict()`` of
  that worker's ``datasets.IterableDataset`` (file and row reached) and which worker yields next;
  checkpoints store it per process, and a resume continues from there without reading again what
  was trained on. The plain torch DataLoader cannot do this once it has worker processes.
* Passes: a training epoch is a fixed number of batches (DDP needs the same count on every
  process); the stream runs on across epochs, and when a shard is used up the next pass starts,
  reshuffled (``set_epoch(pass)``). Nothing is dropped or repeated within a pass.
* Shuffle buffer: datasets does not save a buffer's content, so a resume with ``--shuffle-buffer``
  > 1 refills it from where the stream was: the rows that sat in it are skipped for that pass, and
  the order after the resume differs from an uninterrupted run. With ``--shuffle-buffer 1`` (the
  files' order still shuffled per pass) a resume is exact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch

from .images import Collate, RowSampler

__all__ = ["StreamingImageDataset", "StreamingTrainLoader", "build_streaming_loaders", "STREAM_STATE_FILE"]

STREAM_STATE_FILE = "stream_state_{rank}.json"


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """Iterable view of a (node-split) datasets.IterableDataset; datasets shards it over loader workers.

    ``state_dict()`` / ``load_state_dict()`` (called inside each worker by StatefulDataLoader) carry
    the datasets position and how many rows this worker has produced this pass, which numbers the
    samples' augmentation seeds.
    """

    def __init__(self, hf: Any, sampler: RowSampler, rank: int = 0, world: int = 1):
        self.hf, self.sampler, self.rank, self.world = hf, sampler, rank, world
        self.produced = 0
        self._resume_produced = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch
        self.hf.set_epoch(epoch)  # reshuffles files (and buffer) deterministically per pass

    def state_dict(self) -> Dict[str, Any]:
        return {"hf": self.hf.state_dict(), "produced": self.produced}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("hf") is not None:
            self.hf.load_state_dict(state["hf"])
        self._resume_produced = int(state.get("produced", 0))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        self.produced, self._resume_produced = self._resume_produced, 0
        for row in self.hf:
            index = (self.produced * self.world + self.rank) * workers + worker  # unique in this pass
            self.produced += 1
            yield self.sampler.process(row, index)


class StreamingTrainLoader:
    """``epoch(skip)`` yields one epoch's batches from the continuing stream (see the module doc)."""

    def __init__(self, dataset: StreamingImageDataset, loader: Any, batches: int, device: torch.device):
        self.dataset, self.loader, self.batches, self.device = dataset, loader, batches, device
        self.pass_index = 0
        self._iterator: Optional[Iterator] = None
        self._batches_this_pass = 0

    def epoch(self, skip: int = 0) -> Iterator[Dict[str, Any]]:
        from .data import DataError

        left = self.batches - skip
        while left > 0:
            if self._iterator is None:
                self.dataset.set_epoch(self.pass_index)
                self._iterator, self._batches_this_pass = iter(self.loader), 0
            try:
                batch = next(self._iterator)
            except StopIteration:
                if not self._batches_this_pass:
                    raise DataError("this process's shard of the streamed training data is empty") from None
                self._iterator, self.pass_index = None, self.pass_index + 1
                continue
            self._batches_this_pass += 1
            left -= 1
            batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            batch["pass"] = self.pass_index
            yield batch

    def state_dict(self) -> Dict[str, Any]:
        return {"pass": self.pass_index, "loader": self.loader.state_dict() if self._iterator is not None else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pass_index = int(state["pass"])
        self._iterator = None
        if state.get("loader"):
            self.dataset.set_epoch(self.pass_index)  # datasets applies a state only to its own pass
            self.loader.load_state_dict(state["loader"])
            self._iterator, self._batches_this_pass = iter(self.loader), 1  # resumed inside a pass

    def save(self, folder: Path, rank: int) -> None:
        (folder / STREAM_STATE_FILE.format(rank=rank)).write_text(json.dumps(self.state_dict()))

    def restore(self, folder: Path, rank: int) -> bool:
        path = folder / STREAM_STATE_FILE.format(rank=rank)
        if not path.is_file():
            return False
        self.load_state_dict(json.loads(path.read_text()))
        return True


def build_streaming_loaders(args: Any, acc: Any, data: Any, train_tf: Callable, eval_tf: Callable,
                            shape: Tuple[int, ...], even: bool):
    from datasets.distributed import split_dataset_by_node
    from torch.utils.data import DataLoader

    from .config import ConfigError
    from .data import DataError

    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError as e:
        raise ConfigError("--streaming needs torchdata (pip install torchdata) to resume a stream where it "
                          "was") from e
    mode = "L" if data.in_chans == 1 else "RGB"
    cols = (args.image_column, args.label_column)
    common = dict(num_workers=args.workers, pin_memory=acc.device.type == "cuda")
    rank, world = acc.process_index, acc.num_processes
    train = data.train.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer) if args.shuffle_buffer > 0 \
        else data.train
    shards = data.train.num_shards
    train_hf = split_dataset_by_node(train, rank, world)
    val_hf = split_dataset_by_node(data.val, rank, world)
    sampler = RowSampler(*cols, train_tf, mode, args.seed, data.label_ids, stable_index=False)
    train_ds = StreamingImageDataset(train_hf, sampler, rank, world)
    val_sampler = RowSampler(*cols, eval_tf, mode, args.seed, data.label_ids, stable_index=False)
    val_ds = StreamingImageDataset(val_hf, val_sampler, rank, world)
    loader = StatefulDataLoader(train_ds, batch_size=args.batch_size, drop_last=True,
                                collate_fn=Collate(shape, drop_bad=True, even=even), **common)
    val_loader = DataLoader(val_ds, batch_size=args.val_batch_size, collate_fn=Collate(shape, drop_bad=False),
                            **common)
    # Every process must run the same number of batches (DDP), and epochs end on an update.
    batches = data.train_len // (world * args.batch_size) // args.grad_accum * args.grad_accum
    if batches == 0:
        raise DataError("--train-samples is smaller than one update's worth of batches")
    if world > 1:
        how = (f"each reads its own {shards // world} of the {shards} files" if shards % world == 0 else
               f"{shards} file(s) do not divide by {world}: each process reads the whole stream and keeps every "
               f"{world}th row (split the data into a multiple of {world} files to read less)")
        data.label_note += f"; streaming over {world} processes: {how}"
    return train_ds, StreamingTrainLoader(train_ds, loader, batches, acc.device), val_loader, batches
