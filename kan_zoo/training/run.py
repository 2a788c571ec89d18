"""train_imagenet.py's main(): set up data, model and optimisation, train, validate, export."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..cpu_memory import reuse_cpu_memory
from ..layers import cpu_kernels_enabled, set_cpu_kernels_enabled
from .aids import group_summary
from .checkpoint import CheckpointError, TrainState, load_checkpoint
from .config import ConfigError, parse_args
from .data import DataError
from .errors import guarded, main_process_first
from .export import export_run
from .loop import (LoopContext, Preempted, SimulatedKill, StopSignal, checkpoint, evaluate, lr_warning,
                   sync_unreadable, train_one_epoch)
from .modeling import ModelError
from .setup import Setup, build_setup, check_shared_output, data_and_model, preflight, use_cpu
from .tracking import CSVTracker, build_trackers

__all__ = ["main", "SimulatedKill", "Preempted", "ConfigError", "DataError", "ModelError", "CheckpointError"]

_log = logging.getLogger("train_imagenet")


def _print(acc: Any, msg: str) -> None:
    if acc.is_main_process:
        print(msg, flush=True)


def _val_loader_iter(loader: Any, streaming: bool, device: Any):
    if not streaming:
        return loader
    return ({k: v.to(device) if hasattr(v, "to") else v for k, v in b.items()} for b in loader)


def _run_validation(ctx: LoopContext, val_loader: Any, streaming: bool) -> Dict[str, float]:
    acc = ctx.accelerator
    before = ctx.bad_val.count
    metrics = {f"val/{k}": v for k, v in evaluate(acc, ctx.model, _val_loader_iter(val_loader, streaming, acc.device),
                                                  streaming, bad=ctx.bad_val).items()}
    ctx.bad_val.sync(acc)  # names each unreadable validation file once per run
    metrics["val/unreadable"] = ctx.bad_val.count
    if ctx.bad_val.count > before:
        _print(acc, f"warning: {ctx.bad_val.count} unreadable validation image(s) are left out of the metrics")
    if ctx.ema is not None:
        ema_metrics = evaluate(acc, ctx.ema.module, _val_loader_iter(val_loader, streaming, acc.device), streaming)
        metrics.update({f"val_ema/{k}": v for k, v in ema_metrics.items() if k != "count"})
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs training; returns the final metrics (and the export folder) on every process.

    Several calls in one process (tests, notebooks, benchmarks) each get a fresh accelerate state.
    """
    args = parse_args(argv)
    kernels_before = cpu_kernels_enabled()  # a process-wide switch: put back for whoever runs next
    try:
        return _run(args)
    finally:
        set_cpu_kernels_enabled(kernels_before)
        _forget_accelerate_state()


def _forget_accelerate_state() -> None:
    """accelerate keeps its state in process-wide singletons; the next run builds its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _accelerator(args: Any, out: Path, trackers: Any) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    try:
        return Accelerator(
            cpu=use_cpu(args.cpu),
            mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
            dynamo_backend="inductor" if args.compile else None,
        )
    except ValueError as e:  # e.g. fp16 without a GPU: the same on every process
        raise ConfigError(str(e)) from e


def _run(args: Any) -> Dict[str, Any]:
    from accelerate.utils import set_seed
    from timm.utils import ModelEmaV3

    out = Path(args.output)
    trackers = build_trackers(args.log_with, str(out / "logs"), "train")
    acc = _accelerator(args, out, trackers)
    with guarded(acc):  # each setup stage's errors are agreed on by every process (errors.py)
        preflight(args)
    check_shared_output(acc, out, guarded)
    logging.basicConfig(level=logging.INFO if acc.is_local_main_process else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    if acc.device.type == "cpu" and args.reuse_cpu_memory and reuse_cpu_memory():
        _log.info("reusing freed CPU memory (kan_zoo.reuse_cpu_memory)")
    if acc.device.type == "cpu" and args.cpu_kernels:
        set_cpu_kernels_enabled(True)
        _log.info("compiled CPU basis kernels on (kan_zoo.layers.set_cpu_kernels_enabled)")
    set_seed(args.seed)  # identical initial weights on every process

    # the main process downloads / builds the caches first
    data, model = main_process_first(acc, lambda: data_and_model(args))
    with guarded(acc):
        setup = build_setup(args, acc, data, model, out)
    model, optimizer = acc.prepare(model, setup.optimizer)
    ema = None
    if args.model_ema:
        ema = ModelEmaV3(acc.unwrap_model(model), decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                         device=acc.device)
        ema.eval()

    state = TrainState(model=args.model, num_processes=acc.num_processes, batch_size=args.batch_size,
                       label_names=data.label_names)
    stream = setup.train_loader if setup.streaming else None
    if setup.resume_from is not None:
        state = load_checkpoint(acc, setup.resume_from, model, ema, args.model)
        _adapt_position(acc, state, args, setup.batches)
        if stream is not None:
            _resume_stream(acc, stream, setup.resume_from, state, args)
        where = (f"the run had finished its {state.epoch} epochs" if state.epoch >= args.epochs else
                 f"epoch {state.epoch + 1}, batch {state.batch_in_epoch}")
        _print(acc, f"resumed from {setup.resume_from}: {where}, update {state.global_step}")
    elif args.resume:
        _print(acc, f"--resume latest: no checkpoint in {out / 'checkpoints'} yet, starting from scratch")
    state.label_names = data.label_names
    setup.scheduler.step_update(num_updates=state.global_step)

    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args), indent=1, default=str))
    acc.init_trackers("train", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                       for k, v in vars(args).items()})
    if setup.resume_from is not None:
        for tracker in trackers:
            if isinstance(tracker, CSVTracker):
                tracker.drop_after(state.global_step)
    _describe(acc, args, data, model, optimizer, setup)

    # SIGTERM / SIGUSR1 (preemption notices, scancel, kill) -> checkpoint at the next update, then exit.
    ctx = LoopContext(acc, model, optimizer, setup.scheduler, setup.criterion, setup.mixup, ema, args, state,
                      setup.batches, stop=StopSignal().install(), regs=setup.regs, grid=setup.grid,
                      frozen_norms=setup.frozen_norms, teacher=setup.teacher, stream=stream)
    try:
        metrics = _train(ctx, setup)
    finally:
        ctx.stop.uninstall()
    result = export_run(args, acc, model, ema, metrics, data, setup.data_cfg, merge_peft=setup.peft)
    result["optimizer_groups"] = group_summary(optimizer)
    if setup.grid is not None:
        result["grid_refits"] = setup.grid.refits  # the export's state_dict carries the refitted grids
    acc.end_training()
    return result


def _resume_stream(acc: Any, stream: Any, folder: Path, state: TrainState, args: Any) -> None:
    if not stream.restore(folder, acc.process_index):
        raise CheckpointError(f"checkpoint {str(folder)!r} holds no stream position for process "
                              f"{acc.process_index}: it was not written by a --streaming run with this many "
                              f"processes")
    if args.shuffle_buffer > 1:
        _print(acc, f"warning: resuming a shuffled stream: datasets does not save the shuffle buffer, so the up "
                    f"to {args.shuffle_buffer} rows per loader worker that were in it are skipped in this pass "
                    f"(--shuffle-buffer 1 resumes exactly)")


def _describe(acc: Any, args: Any, data: Any, model: Any, optimizer: Any, setup: Setup) -> None:
    """The run's summary lines, printed once."""
    warn = lr_warning(setup.total_updates, args.warmup_steps)
    if warn:
        _print(acc, f"warning: {warn}")
    if data.label_note:
        _print(acc, data.label_note)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_txt = f" ({n_train / 1e6:.4f}M trainable)" if n_train != n_params else ""
    _print(acc, f"{args.model}: {n_params / 1e6:.2f}M parameters{frozen_txt}, {data.num_classes} classes, "
                f"{data.in_chans} channel(s), input {tuple(setup.data_cfg['input_size'])}; {data.train_len} training "
                f"images, {setup.batches} batches x {acc.num_processes} process(es) per epoch, "
                f"{setup.updates_per_epoch} updates per epoch, {setup.total_updates} in all")
    if len(optimizer.param_groups) > 1 and (args.layer_decay is not None or args.basis_lr_mult != 1
                                            or args.basis_wd_mult != 1):
        _print(acc, "optimizer groups: " + "; ".join(
            f"{g['name']} lr x{g['lr_scale']:.3g} wd {g['weight_decay']:.2g} ({g['params']} params)"
            for g in group_summary(optimizer)))
    if setup.regs is not None:
        _print(acc, "regularisers: " + ", ".join(f"{k} x{v:g}" for k, v in setup.regs.weights.items()))
    if setup.teacher is not None:
        arch = setup.teacher.wrapped.model.pretrained_cfg.get("architecture", args.teacher)
        n_teacher = sum(p.numel() for p in setup.teacher.parameters())
        _print(acc, f"distilling from teacher {arch} ({n_teacher / 1e6:.2f}M parameters, frozen, eval mode): "
                    f"loss = {1 - args.distill_alpha:g} x task + {args.distill_alpha:g} x KL at temperature "
                    f"{args.distill_temperature:g}")


def _adapt_position(acc: Any, state: TrainState, args: Any, batches: int) -> None:
    """A resume on another number of processes or batch size: keep the samples seen this epoch.

    The exact sample order then differs from an uninterrupted run (the sampler shards it per
    process), so this is a close continuation rather than a bitwise one; said out loud.
    """
    old = (state.num_processes or acc.num_processes, state.batch_size or args.batch_size)
    new = (acc.num_processes, args.batch_size)
    if old != new and state.batch_in_epoch:
        seen = state.batch_in_epoch * old[0] * old[1]
        state.batch_in_epoch = min(seen // (new[0] * new[1]), batches)
        _print(acc, f"warning: checkpoint written with {old[0]} process(es) x batch {old[1]}, resuming with "
                    f"{new[0]} x {new[1]}: continuing at batch {state.batch_in_epoch} of the epoch (same number of "
                    f"samples seen, not the same samples)")
    state.num_processes, state.batch_size = new


def _train(ctx: LoopContext, setup: Setup) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    acc, args, state, ema = ctx.accelerator, ctx.args, ctx.state, ctx.ema
    metrics: Dict[str, Any] = {}
    show = acc.is_local_main_process and not args.no_progress
    start = time.time()
    while state.epoch < args.epochs:
        epoch, skip = state.epoch, state.batch_in_epoch
        if setup.streaming:
            loader = setup.train_loader.epoch(skip)
        else:
            setup.train_ds.set_epoch(epoch)
            setup.train_loader.set_epoch(epoch)
            loader = acc.skip_first_batches(setup.train_loader, skip) if skip else setup.train_loader
        progress = tqdm(total=setup.batches, initial=skip, desc=f"epoch {epoch + 1}/{args.epochs}",
                        disable=not show, dynamic_ncols=True, mininterval=1.0, file=sys.stdout)
        try:
            train_one_epoch(ctx, loader, progress)
        finally:
            progress.close()
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        sync_unreadable(ctx)
        metrics = _run_validation(ctx, setup.val_loader, setup.streaming)
        metrics["train/unreadable_images"] = state.skipped_images
        metrics["epoch"] = state.epoch
        acc.log(metrics, step=state.global_step)
        ema_txt = f", EMA top-1 {metrics['val_ema/top1']:.2f}%" if ema is not None else ""
        _print(acc, f"epoch {state.epoch}/{args.epochs}: val top-1 {metrics['val/top1']:.2f}% "
                    f"top-5 {metrics['val/top5']:.2f}%{ema_txt} ({metrics['val/count']} images, "
                    f"{state.skipped_images} unreadable training image file(s) skipped, {time.time() - start:.0f}s)")
        checkpoint(ctx)  # epoch checkpoint, taken after validation
    if not metrics:  # resumed a finished run: measure again for the export
        metrics = _run_validation(ctx, setup.val_loader, setup.streaming)
        metrics["train/unreadable_images"] = state.skipped_images
    return metrics
