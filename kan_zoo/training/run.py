"""train_imagenet.py's main(): set up data, model and optimisation, train, validate, export."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import torch

from ..cpu_memory import reuse_cpu_memory
from ..layers import cpu_kernels_enabled, set_cpu_kernels_enabled
from .aids import (GridRefresher, apply_grid_state, build_regularizers, freeze_backbone, group_summary,
                   optimizer_params, read_grid_state)
from .checkpoint import CheckpointError, TrainState, list_checkpoints, load_checkpoint, resolve_resume
from .config import ConfigError, parse_args
from .data import (Collate, DataError, ImageClassificationDataset, StreamingImageDataset, build_transforms,
                   load_data)
from .export import cfg_overrides, export_model
from .loop import (LoopContext, Preempted, SimulatedKill, StopSignal, checkpoint, evaluate, lr_warning,
                   sync_bad_count, train_one_epoch, updates_per_epoch)
from .modeling import ModelError, apply_peft, create_model
from .tracking import CSVTracker, build_trackers

__all__ = ["main", "SimulatedKill", "Preempted", "ConfigError", "DataError", "ModelError", "CheckpointError"]

_log = logging.getLogger("train_imagenet")


def _print(acc: Any, msg: str) -> None:
    if acc.is_main_process:
        print(msg, flush=True)


def _preflight(args: Any) -> None:
    """Cheap checks that need neither data nor processes."""
    import kan_zoo  # noqa: F401  registers the kan_* architectures in timm

    from .modeling import _check_name

    _check_name(args.model)
    if args.push_to_hub:
        from huggingface_hub import get_token

        if not get_token():
            raise ConfigError("--push-to-hub needs a Hugging Face token (huggingface-cli login or HF_TOKEN); "
                             "none found")
    out = Path(args.output)
    if args.resume is None and list_checkpoints(out):
        raise CheckpointError(f"{str(out)!r} already holds checkpoints; pass --resume to continue that run "
                              f"or choose another --output")


def _use_cpu(force: bool) -> bool:
    """--cpu, or several processes but no device that can run them: train on CPU over gloo.

    accelerate only picks its multi-CPU mode when asked for the CPU explicitly, and its launcher
    cannot combine --cpu with several processes without MPI; so `accelerate launch --multi_gpu
    --num_processes 2` (or torchrun) on a machine without GPUs lands here. (MPS has no
    multi-process backend, so it counts as no device.)
    """
    if force:
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if hasattr(torch, "accelerator"):
        device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        has_device = device is not None and device.type != "mps"
    else:
        has_device = torch.cuda.is_available()
    return world > 1 and not has_device


def _build_criterion(args: Any, num_classes: int):
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=args.smoothing,
                      num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup  # mixup applies the label smoothing itself
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing), None
    return torch.nn.CrossEntropyLoss(), None


def _build_loaders(args: Any, acc: Any, data: Any, train_tf: Any, eval_tf: Any, input_size: Sequence[int],
                   even: bool):
    from torch.utils.data import DataLoader

    mode = "L" if data.in_chans == 1 else "RGB"
    common = dict(num_workers=args.workers, pin_memory=acc.device.type == "cuda")
    cols = (args.image_column, args.label_column)
    shape = tuple(input_size)
    if not data.streaming:
        train_ds = ImageClassificationDataset(data.train, *cols, train_tf, mode, args.seed)
        val_ds = ImageClassificationDataset(data.val, *cols, eval_tf, mode, args.seed)
        train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                  collate_fn=Collate(shape, drop_bad=True, even=even), **common)
        val_loader = DataLoader(val_ds, batch_size=args.val_batch_size, shuffle=False,
                                collate_fn=Collate(shape, drop_bad=False), **common)
        train_loader, val_loader = acc.prepare(train_loader, val_loader)
        if len(train_loader) == 0:
            raise DataError(f"{data.train_len} training images are fewer than one batch per process "
                            f"({args.batch_size} x {acc.num_processes}); lower --batch-size")
        return train_ds, train_loader, val_loader, len(train_loader)
    from datasets.distributed import split_dataset_by_node

    rank, world = acc.process_index, acc.num_processes
    train_hf = split_dataset_by_node(data.train.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer), rank, world)
    val_hf = split_dataset_by_node(data.val, rank, world)
    train_ds = StreamingImageDataset(train_hf, *cols, train_tf, mode, args.seed)
    val_ds = StreamingImageDataset(val_hf, *cols, eval_tf, mode, args.seed)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, drop_last=True,
                              collate_fn=Collate(shape, drop_bad=True, even=even), **common)
    val_loader = DataLoader(val_ds, batch_size=args.val_batch_size,
                            collate_fn=Collate(shape, drop_bad=False), **common)
    # Every process must run the same number of batches (DDP), and epochs end on an update.
    batches = data.train_len // (world * args.batch_size) // args.grad_accum * args.grad_accum
    if batches == 0:
        raise DataError("--train-samples is smaller than one update's worth of batches")
    return train_ds, train_loader, val_loader, batches


def _stream_epoch(loader: Any, n: int, skip: int, device: torch.device) -> Iterator[Dict[str, torch.Tensor]]:
    """n batches of a streamed shard (restarting it if it runs short), the first ``skip`` dropped."""
    done, empty_passes = 0, 0
    while done < n:
        got = False
        for batch in loader:
            got = True
            done += 1
            if done > skip:
                yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if done >= n:
                return
        empty_passes = 0 if got else empty_passes + 1
        if empty_passes:
            raise DataError("this process's shard of the streamed training data is empty")


def _val_loader_iter(loader: Any, streaming: bool, device: torch.device):
    if not streaming:
        return loader
    return ({k: v.to(device) for k, v in b.items()} for b in loader)


def _run_validation(ctx: LoopContext, val_loader: Any, streaming: bool) -> Dict[str, float]:
    acc = ctx.accelerator
    metrics = {f"val/{k}": v for k, v in evaluate(acc, ctx.model, _val_loader_iter(val_loader, streaming, acc.device),
                                                  streaming).items()}
    if ctx.ema is not None:
        ema_metrics = evaluate(acc, ctx.ema.module, _val_loader_iter(val_loader, streaming, acc.device), streaming)
        metrics.update({f"val_ema/{k}": v for k, v in ema_metrics.items() if k not in ("count", "unreadable")})
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs training; returns the final metrics (and the export folder) on every process."""
    args = parse_args(argv)
    kernels_before = cpu_kernels_enabled()  # a process-wide switch: put back for whoever runs next
    try:
        return _run(args)
    finally:
        set_cpu_kernels_enabled(kernels_before)


def _run(args: Any) -> Dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    _preflight(args)
    out = Path(args.output)
    trackers = build_trackers(args.log_with, str(out / "logs"), "train")
    acc = Accelerator(
        cpu=_use_cpu(args.cpu),
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum, log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        dynamo_backend="inductor" if args.compile else None,
    )
    logging.basicConfig(level=logging.INFO if acc.is_local_main_process else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    if acc.device.type == "cpu" and args.reuse_cpu_memory and reuse_cpu_memory():
        _log.info("reusing freed CPU memory (kan_zoo.reuse_cpu_memory)")
    if acc.device.type == "cpu" and args.cpu_kernels:
        set_cpu_kernels_enabled(True)
        _log.info("compiled CPU basis kernels on (kan_zoo.layers.set_cpu_kernels_enabled)")
    set_seed(args.seed)  # identical initial weights on every process

    with acc.main_process_first():  # the main process downloads / builds the caches first
        data = load_data(args)
        model = create_model(args, data.num_classes, data.in_chans)
    if args.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ModelError(f"{args.model!r} does not support --grad-checkpointing")
        model.set_grad_checkpointing(True)
    peft = apply_peft(model, args)  # before resuming: checkpoints of a PEFT run hold the wrapped model
    frozen_norms = freeze_backbone(model) if args.freeze_backbone else []
    resume_from = resolve_resume(args.resume, out)
    if resume_from is not None:
        saved_grid = read_grid_state(resume_from)
        if saved_grid:  # grown grids must be re-grown before the optimizer and EMA see the parameters
            apply_grid_state(model, saved_grid)
    regs = build_regularizers(args, model)  # forward hooks go on before prepare() wraps the model
    grid = GridRefresher(args, acc, model) if args.grid_update_every else None
    train_tf, eval_tf, data_cfg = build_transforms(args, model, data.in_chans)
    criterion, mixup = _build_criterion(args, data.num_classes)
    train_ds, train_loader, val_loader, batches = _build_loaders(
        args, acc, data, train_tf, eval_tf, data_cfg["input_size"], even=mixup is not None)

    upe = updates_per_epoch(batches, args.grad_accum)
    total_updates = upe * args.epochs
    opt_kwargs: Dict[str, Any] = {}
    if args.opt_eps is not None:
        opt_kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs["betas"] = tuple(args.opt_betas)
    params = optimizer_params(model, args)
    if isinstance(params, torch.nn.Module) and args.layer_decay is not None:
        opt_kwargs["layer_decay"] = args.layer_decay  # timm builds the per-layer groups (group_matcher)
    optimizer = create_optimizer_v2(params, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **opt_kwargs)
    # Schedule in optimizer updates (one "epoch" of the factory = one update), so warmup is exact.
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=total_updates, warmup_epochs=args.warmup_steps,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr,
        decay_rate=args.poly_power if args.sched == "poly" else args.decay_rate,
        step_on_epochs=False, updates_per_epoch=1)
    model, optimizer = acc.prepare(model, optimizer)
    ema = None
    if args.model_ema:
        ema = ModelEmaV3(acc.unwrap_model(model), decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                         device=acc.device)
        ema.eval()

    state = TrainState(model=args.model, num_processes=acc.num_processes, batch_size=args.batch_size)
    if resume_from is not None:
        state = load_checkpoint(acc, resume_from, model, ema, args.model)
        _adapt_position(acc, state, args, batches)
        where = (f"the run had finished its {state.epoch} epochs" if state.epoch >= args.epochs else
                 f"epoch {state.epoch + 1}, batch {state.batch_in_epoch}")
        _print(acc, f"resumed from {resume_from}: {where}, update {state.global_step}")
    elif args.resume:
        _print(acc, f"--resume latest: no checkpoint in {out / 'checkpoints'} yet, starting from scratch")
    scheduler.step_update(num_updates=state.global_step)

    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args), indent=1, default=str))
    acc.init_trackers("train", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                       for k, v in vars(args).items()})
    if resume_from is not None:
        for tracker in trackers:
            if isinstance(tracker, CSVTracker):
                tracker.drop_after(state.global_step)
    warn = lr_warning(total_updates, args.warmup_steps)
    if warn:
        _print(acc, f"warning: {warn}")
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_txt = f" ({n_train / 1e6:.4f}M trainable)" if n_train != n_params else ""
    _print(acc, f"{args.model}: {n_params / 1e6:.2f}M parameters{frozen_txt}, {data.num_classes} classes, {data.in_chans} "
                f"channel(s), input {tuple(data_cfg['input_size'])}; {data.train_len} training images, "
                f"{batches} batches x {acc.num_processes} process(es) per epoch, {upe} updates per epoch, "
                f"{total_updates} in all")
    if len(optimizer.param_groups) > 1 and (args.layer_decay is not None or args.basis_lr_mult != 1
                                            or args.basis_wd_mult != 1):
        _print(acc, "optimizer groups: " + "; ".join(
            f"{g['name']} lr x{g['lr_scale']:.3g} wd {g['weight_decay']:.2g} ({g['params']} params)"
            for g in group_summary(optimizer)))
    if regs is not None:
        _print(acc, "regularisers: " + ", ".join(f"{k} x{v:g}" for k, v in regs.weights.items()))

    # SIGTERM / SIGUSR1 (preemption notices, scancel, kill) -> checkpoint at the next update, then exit.
    ctx = LoopContext(acc, model, optimizer, scheduler, criterion, mixup, ema, args, state, batches,
                      stop=StopSignal().install(), regs=regs, grid=grid, frozen_norms=frozen_norms)
    try:
        metrics = _train(ctx, args, acc, data, train_ds, train_loader, val_loader, batches)
    finally:
        ctx.stop.uninstall()
    result = _export(args, acc, model, ema, metrics, data, data_cfg, merge_peft=peft)
    result["optimizer_groups"] = group_summary(optimizer)
    if grid is not None:
        result["grid_refits"] = grid.refits  # the export's state_dict carries the refitted grids
    acc.end_training()
    return result


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


def _train(ctx: LoopContext, args: Any, acc: Any, data: Any, train_ds: Any, train_loader: Any, val_loader: Any,
           batches: int) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    state, ema = ctx.state, ctx.ema
    metrics: Dict[str, Any] = {}
    show = acc.is_local_main_process and not args.no_progress
    start = time.time()
    while state.epoch < args.epochs:
        epoch, skip = state.epoch, state.batch_in_epoch
        train_ds.set_epoch(epoch)
        if data.streaming:
            loader = _stream_epoch(train_loader, batches, skip, acc.device)
        else:
            train_loader.set_epoch(epoch)
            loader = acc.skip_first_batches(train_loader, skip) if skip else train_loader
        progress = tqdm(total=batches, initial=skip, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not show,
                        dynamic_ncols=True, mininterval=1.0, file=sys.stdout)
        try:
            train_one_epoch(ctx, loader, progress)
        finally:
            progress.close()
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        metrics = _run_validation(ctx, val_loader, data.streaming)
        sync_bad_count(ctx)
        metrics["train/unreadable_images"] = state.skipped_images
        metrics["epoch"] = state.epoch
        acc.log(metrics, step=state.global_step)
        ema_txt = f", EMA top-1 {metrics['val_ema/top1']:.2f}%" if ema is not None else ""
        _print(acc, f"epoch {state.epoch}/{args.epochs}: val top-1 {metrics['val/top1']:.2f}% "
                    f"top-5 {metrics['val/top5']:.2f}%{ema_txt} ({metrics['val/count']} images, "
                    f"{state.skipped_images} unreadable training images skipped, {time.time() - start:.0f}s)")
        checkpoint(ctx)  # epoch checkpoint, taken after validation
    if not metrics:  # resumed a finished run: measure again for the export
        metrics = _run_validation(ctx, val_loader, data.streaming)
    return metrics


def _export(args: Any, acc: Any, model: Any, ema: Any, metrics: Dict[str, Any], data: Any,
            data_cfg: Dict[str, Any], merge_peft: bool = False) -> Dict[str, Any]:
    use_ema = ema is not None and (args.export_weights == "ema" or (
        args.export_weights == "auto" and metrics.get("val_ema/top1", -1) > metrics["val/top1"]))
    prefix = "val_ema" if use_ema else "val"
    weights = "EMA" if use_ema else "model"
    card_metrics = {f"top-1 accuracy (%), {args.val_split}": round(metrics[f"{prefix}/top1"], 3),
                    f"top-5 accuracy (%), {args.val_split}": round(metrics[f"{prefix}/top5"], 3),
                    f"{args.val_split} images": metrics["val/count"], "weights": weights,
                    "epochs": args.epochs, "dataset": args.dataset}
    folder = Path(args.export_dir or Path(args.output) / "export")
    export_metrics = {"top1": metrics[f"{prefix}/top1"], "top5": metrics[f"{prefix}/top5"],
                      "val_images": metrics["val/count"], "weights": weights.lower(), "all": metrics}
    result: Dict[str, Any] = {"metrics": metrics, "export_metrics": export_metrics, "export_dir": str(folder)}
    acc.wait_for_everyone()
    if acc.is_main_process:
        net = ema.module if use_ema else acc.unwrap_model(model)
        if merge_peft:  # training is over: the export is the plain model of the higher degree
            from kan_zoo.peft import merge

            net = merge(net)
        export_model(net, folder, metrics=card_metrics, data_config=data_cfg, label_names=data.label_names)
        (folder / "metrics.json").write_text(json.dumps(export_metrics, indent=1))  # exact values, for tools
        print(f"exported {weights} weights (val top-1 {export_metrics['top1']:.2f}%) to {folder}", flush=True)
        if args.push_to_hub:
            result["hub_url"] = _push(args.push_to_hub, net, folder, card_metrics,
                                      cfg_overrides(data_cfg, data.label_names))
            print(f"uploaded to {result['hub_url']}", flush=True)
    acc.wait_for_everyone()
    return result


def _push(repo_id: str, net: Any, folder: Path, metrics: Dict[str, Any], overrides: Dict[str, Any]) -> str:
    try:
        from kan_zoo.hub import push_to_hub
    except ImportError:
        push_to_hub = None
    try:
        if push_to_hub is not None:
            return str(push_to_hub(net, repo_id, metrics=metrics, pretrained_cfg_overrides=overrides))
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id))
    except Exception as e:  # the export folder is safe on disk: say how to retry
        raise RuntimeError(f"upload to {repo_id!r} failed ({type(e).__name__}: {e}); the exported model is in "
                           f"{folder}; retry with huggingface-cli upload {repo_id} {folder}") from e
