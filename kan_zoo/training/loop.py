"""One training epoch and one evaluation pass."""
from __future__ import annotations

import json
import math
import os
import random
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..layers import moe_aux_loss
from .bad_images import UnreadableImages
from .checkpoint import TrainState, save_checkpoint
from .distill import distillation_loss
from .images import sample_seed
from .losses import assemble_loss

__all__ = ["SimulatedKill", "Preempted", "StopSignal", "LoopContext", "train_one_epoch", "evaluate", "checkpoint",
           "sync_unreadable", "broadcast_buffers", "peak_memory_mib"]


class SimulatedKill(BaseException):
    """Raised by --crash-after-steps: leaves like a kill, with no final save (tests only)."""


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived: a checkpoint was saved at the current update, training stopped."""


class StopSignal:
    """Turns SIGTERM / SIGUSR1 (schedulers' preemption notice) into a flag checked once per update."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # signal() only works there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def anywhere(self, accelerator: Any) -> bool:
        """Collective: True on every process as soon as any one of them got a signal."""
        if accelerator.num_processes == 1:
            return self.received is not None
        flag = torch.tensor(1.0 if self.received is not None else 0.0, device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


@dataclass
class LoopContext:
    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    criterion: Callable
    mixup: Optional[Callable]
    ema: Optional[torch.nn.Module]
    args: Any
    state: TrainState
    batches_per_epoch: int
    stop: StopSignal = field(default_factory=StopSignal)
    # Running sums stay on the device: reading them every batch would stall a GPU pipeline.
    window: Dict[str, Any] = field(default_factory=lambda: {"n": 0})  # summed loss terms since the last log
    # Throughput since the last log: images this process trained on, and the wall time of training
    # batches only (the clock stops between epochs, where validation and the epoch checkpoint run).
    window_images: int = 0
    window_seconds: float = 0.0
    clock: float = 0.0
    regs: Optional[Any] = None  # kan_zoo.regularizers.RegularizerSet, attached to the unwrapped model
    grid: Optional[Any] = None  # aids.GridRefresher
    frozen_norms: List[torch.nn.Module] = field(default_factory=list)  # --freeze-backbone: kept in eval
    teacher: Optional[torch.nn.Module] = None  # distill.Teacher (--teacher / --teacher-path)
    bad_train: Optional[UnreadableImages] = None
    bad_val: Optional[UnreadableImages] = None
    stream: Optional[Any] = None  # streaming.StreamingTrainLoader: its position goes into checkpoints

    def __post_init__(self) -> None:
        report = Path(self.args.output) / "unreadable_images.txt"
        if self.bad_train is None:
            self.bad_train = UnreadableImages(self.args.train_split, "training", self.state.bad_train, report)
        if self.bad_val is None:
            self.bad_val = UnreadableImages(self.args.val_split, "validation", self.state.bad_val, report)


def _seed_batch(seed: int, epoch: int, batch: int, rank: int) -> None:
    # Dropout, drop-path and mixup draw from the global RNGs; seeding them per batch from the
    # run position makes a resumed run draw exactly what the uninterrupted one drew.
    s = sample_seed(seed + 1_000_003 * (rank + 1), epoch, batch)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def sync_unreadable(ctx: LoopContext) -> None:
    """Collective: names the training files found unreadable since the last call; into the run state."""
    ctx.bad_train.sync(ctx.accelerator)
    ctx.state.bad_train = sorted(ctx.bad_train.known)
    ctx.state.skipped_images = ctx.bad_train.count


def broadcast_buffers(accelerator: Any, module: torch.nn.Module) -> None:
    """Collective: every process's buffers become the main process's.

    BatchNorm statistics move with each process's own batch; DDP overwrites them with the main
    process's at the next forward, but an EMA updated in between would average each process's own
    and drift apart (only the main process's is saved, so a resumed run's EMA metrics would differ).
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    groups: Dict[Any, List[torch.Tensor]] = {}
    for b in module.buffers():
        groups.setdefault((b.dtype, b.device), []).append(b)
    for bufs in groups.values():
        flat = _flatten_dense_tensors(bufs)
        dist.broadcast(flat, src=0)
        for b, synced in zip(bufs, _unflatten_dense_tensors(flat, bufs)):
            b.copy_(synced)


def checkpoint(ctx: LoopContext) -> None:
    sync_unreadable(ctx)
    extra = None
    if ctx.grid is not None:  # grid sizes and attributes live outside state_dict()
        from .aids import GRID_STATE_FILE, grid_state

        extra = {GRID_STATE_FILE: json.dumps(grid_state(ctx.accelerator.unwrap_model(ctx.model)), indent=1)}
    ctx.state.bad_val = sorted(ctx.bad_val.known)
    per_process = None
    if ctx.stream is not None:
        rank = ctx.accelerator.process_index
        per_process = lambda folder: ctx.stream.save(folder, rank)  # noqa: E731
    save_checkpoint(ctx.accelerator, ctx.args.output, ctx.state, ctx.ema, ctx.args.keep_checkpoints, extra,
                    per_process)


def _loss(ctx: LoopContext, out: torch.Tensor, teacher_out: Optional[torch.Tensor], target: torch.Tensor,
          valid: torch.Tensor, unwrapped: torch.nn.Module):
    """The step's loss terms (losses.assemble_loss); a placeholder batch (every image unreadable) weighs 0.

    Extra terms are already weighted and logged apart from the task loss, as train/reg_<name>.
    """
    args = ctx.args
    weight = valid.any().to(torch.float32)
    task = ctx.criterion(out.float(), target) * weight
    distill = None
    if teacher_out is not None:
        distill = distillation_loss(out.float(), teacher_out.float(), args.distill_temperature) * weight
    extra = {}
    if ctx.regs is not None:  # always called: it also clears the hooks' activation terms
        extra = {f"reg_{name}": term for name, term in ctx.regs.losses().items()}
    moe = moe_aux_loss(unwrapped) if args.moe_aux_weight else None
    if moe is not None:  # mixture-of-experts load balancing
        extra["reg_moe_aux"] = args.moe_aux_weight * moe
    return assemble_loss(task, distill, args.distill_alpha, extra)


def _record(path: str, rank: int, state: TrainState, batch: Dict[str, Any]) -> None:
    entry = {"epoch": state.epoch, "batch": state.batch_in_epoch, "pass": batch.get("pass"), "ids": batch["ids"]}
    with open(f"{path}.{rank}", "a") as f:
        f.write(json.dumps(entry) + "\n")


def peak_memory_mib(device: torch.device) -> float:
    """The process's memory high-water mark so far: CUDA's max_memory_allocated, else peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _tick(ctx: LoopContext) -> None:
    now = time.perf_counter()
    ctx.window_seconds += now - ctx.clock
    ctx.clock = now


def train_one_epoch(ctx: LoopContext, loader: Iterable, progress: Any) -> None:
    acc, args, state, model = ctx.accelerator, ctx.args, ctx.state, ctx.model
    model.train()
    for m in ctx.frozen_norms:  # --freeze-backbone: the frozen part's running stats stay put
        m.eval()
    unwrapped = acc.unwrap_model(model)
    ctx.clock = time.perf_counter()
    for batch in loader:
        _seed_batch(args.seed, state.epoch, state.batch_in_epoch, acc.process_index)
        x, y = batch["image"], batch["label"]
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx.window_images += x.shape[0]
        ctx.bad_train.add(batch["bad"])
        with acc.accumulate(model):
            target = y
            if ctx.mixup is not None:
                x, target = ctx.mixup(x, y)
            with acc.autocast():
                out = model(x)
                teacher_out = ctx.teacher(x) if ctx.teacher is not None else None  # sees the mixed input
            total, terms = _loss(ctx, out, teacher_out, target, batch["valid"], unwrapped)
            acc.backward(total)
            if acc.sync_gradients and args.clip_grad > 0:
                acc.clip_grad_norm_(model.parameters(), args.clip_grad)
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        if args.record_samples:  # test hook: which samples each batch trained on
            _record(args.record_samples, acc.process_index, state, batch)
        for name, term in terms.items():
            ctx.window[name] = ctx.window.get(name, 0.0) + term
        ctx.window["n"] += 1
        if progress is not None:
            progress.update(1)
        if not acc.sync_gradients:
            continue
        state.global_step += 1
        ctx.scheduler.step_update(num_updates=state.global_step)
        if ctx.ema is not None:
            broadcast_buffers(acc, unwrapped)  # the same EMA on every process
            ctx.ema.update(unwrapped, step=state.global_step)
        if ctx.grid is not None:  # after the step, on this batch's images (before mixup)
            ctx.grid(unwrapped, ctx.optimizer, ctx.ema, state.global_step, batch["image"])
        if state.global_step % args.log_every == 0:
            _log_train(ctx, progress)
        if args.checkpoint_steps and state.global_step % args.checkpoint_steps == 0:
            checkpoint(ctx)
        if args.crash_after_steps is not None and state.global_step >= args.crash_after_steps:
            raise SimulatedKill(f"stopped after {state.global_step} updates (--crash-after-steps)")
        if args.signal_after_steps is not None and state.global_step == args.signal_after_steps:
            os.kill(os.getpid(), signal.SIGTERM)  # test hook: a preemption notice right here
        if ctx.stop.anywhere(acc):
            if not (args.checkpoint_steps and state.global_step % args.checkpoint_steps == 0):
                checkpoint(ctx)
            raise Preempted(f"signal received: checkpoint saved at update {state.global_step}; "
                            f"continue with --resume")
    if acc.device.type == "cuda":
        torch.cuda.synchronize(acc.device)  # the epoch's queued work belongs to its time
    _tick(ctx)  # the window's clock stops with the epoch (validation is not training time)


def scheduled_lr(optimizer: Any) -> float:
    """The scheduler's lr, before any group's lr_scale (basis multiplier, layer decay)."""
    group = optimizer.param_groups[0]
    scale = group.get("lr_scale", 1.0)
    return group["lr"] / scale if scale else group["lr"]


def _log_train(ctx: LoopContext, progress: Any) -> None:
    n = max(ctx.window["n"], 1)
    lr = scheduled_lr(ctx.optimizer)
    terms = {k: float(v) / n for k, v in ctx.window.items() if k != "n"}
    metrics = {"train/loss": terms.get("loss", 0.0), "train/lr": lr, "train/epoch": ctx.state.epoch}
    for k, v in terms.items():
        metrics[f"train/{k}"] = v
    regs = {k: v for k, v in terms.items() if k.startswith("reg_")}
    if ctx.grid is not None:
        metrics["train/grid_refits"] = ctx.grid.refits
    # float() above waited for the device, so the clock covers the work queued in the window.
    _tick(ctx)
    if ctx.window_seconds > 0:  # all processes: each trains on as many batches
        metrics["train/images_per_s"] = ctx.window_images * ctx.accelerator.num_processes / ctx.window_seconds
    metrics["train/peak_memory_mib"] = peak_memory_mib(ctx.accelerator.device)
    ctx.window_images, ctx.window_seconds = 0, 0.0
    ctx.window.clear()
    ctx.window["n"] = 0
    ctx.accelerator.log(metrics, step=ctx.state.global_step)
    if progress is not None:
        extra = {k[4:]: f"{v:.3g}" for k, v in regs.items()}
        progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{lr:.2e}", **extra, refresh=False)


@torch.no_grad()
def evaluate(accelerator: Any, model: torch.nn.Module, loader: Iterable, streaming: bool,
             bad: Optional[UnreadableImages] = None) -> Dict[str, float]:
    """Top-1/top-5 over the whole split, each sample counted once across processes (unreadable
    images excluded; recorded into ``bad`` when given).

    Map-style loaders go through gather_for_metrics, which drops the samples the sampler
    repeated to even out the last batch; streamed shards are disjoint, so their sums are reduced.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # top1, top5, loss, count
    for batch in loader:
        x, y = batch["image"], batch["label"]
        if bad is not None:
            bad.add(batch["bad"])
        with accelerator.autocast():
            out = model(x)
        out = out.float()
        k = min(5, out.shape[1])
        hits = out.topk(k, dim=1).indices.eq(y[:, None])
        per_sample = torch.stack([hits[:, 0].float(), hits.any(1).float(),
                                  F.cross_entropy(out, y, reduction="none"), batch["valid"].float()], 1)
        if not streaming:
            per_sample = accelerator.gather_for_metrics(per_sample)
        valid = per_sample[:, 3]
        sums += (per_sample * valid[:, None]).sum(0).double()
    if streaming:
        sums = accelerator.reduce(sums, reduction="sum")
    n = max(float(sums[3]), 1.0)
    return {"top1": 100.0 * float(sums[0]) / n, "top5": 100.0 * float(sums[1]) / n,
            "loss": float(sums[2]) / n, "count": int(sums[3])}


def lr_warning(total_updates: int, warmup: int) -> Optional[str]:
    if warmup >= total_updates:
        return (f"--warmup-steps {warmup} >= the {total_updates} updates of this run: the learning rate "
                f"never leaves warmup")
    return None


def updates_per_epoch(batches: int, accum: int) -> int:
    return math.ceil(batches / accum)
