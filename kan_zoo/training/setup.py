"""Everything train_imagenet.py builds before its first update: checks, data, model, loaders, optimizer.

Each function here is one setup stage with no collective inside; run.py calls them under
errors.guarded() so that a failure on any process stops all of them with one message.
"""
from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .aids import (GridRefresher, apply_grid_state, build_regularizers, freeze_backbone, optimizer_params,
                   read_grid_state)
from .checkpoint import STATE_FILE, CheckpointError, list_checkpoints, resolve_resume
from .config import ConfigError
from .data import Collate, DataError, ImageClassificationDataset, build_transforms, load_data
from .distill import Teacher, build_teacher
from .loop import updates_per_epoch
from .modeling import ModelError, _check_name, apply_peft, create_model
from .streaming import StreamingTrainLoader, build_streaming_loaders

__all__ = ["preflight", "check_shared_output", "use_cpu", "data_and_model", "map_loaders", "Setup", "build_setup"]

_TOKEN_FILE = ".run_token"


def _check_output_writable(out: Path) -> None:
    """--output must be a folder we can create files in; checked by creating one, as root too."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {str(out)!r} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--output {str(out)!r} cannot be created: {str(probe)!r} is a file")
    try:
        tempfile.TemporaryFile(dir=probe, prefix=".kan_zoo_write_test").close()
    except OSError as e:
        where = "" if probe == out else f" (its nearest existing parent {str(probe)!r} is not writable)"
        raise ConfigError(f"--output {str(out)!r} is not writable{where}: {e.strerror or e}") from e


def preflight(args: Any) -> None:
    """Checks that need no data: model name, output folder, Hub token, an earlier run's checkpoints."""
    import kan_zoo  # noqa: F401  registers the kan_* architectures in timm

    _check_name(args.model)
    if args.teacher:
        _check_name(args.teacher, flag="--teacher")
    out = Path(args.output)
    _check_output_writable(out)
    if args.push_to_hub:
        from huggingface_hub import get_token

        if not get_token():
            raise ConfigError("--push-to-hub needs a Hugging Face token (huggingface-cli login or HF_TOKEN); "
                              "none found")
    if args.resume is None and list_checkpoints(out):
        raise CheckpointError(f"{str(out)!r} already holds checkpoints; pass --resume to continue that run "
                              f"or choose another --output")


def check_shared_output(accelerator: Any, out: Path, guarded: Callable) -> None:
    """Several machines: --output must be one folder they all see (checkpoints are written once, by the
    main process, and every process reads them back on resume). Checked with a token file."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list

    token = [secrets.token_hex(8) if accelerator.is_main_process else None]
    with guarded(accelerator):
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / _TOKEN_FILE).write_text(token[0])
    token = broadcast_object_list(token)
    with guarded(accelerator):
        path = out / _TOKEN_FILE
        if not path.is_file() or path.read_text() != token[0]:
            raise ConfigError(f"--output {str(out)!r} is not the same folder on every machine: put it on storage "
                              f"all nodes share (NFS, Lustre...), where checkpoints are written once and read by all")


def use_cpu(force: bool) -> bool:
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


def data_and_model(args: Any) -> Tuple[Any, torch.nn.Module]:
    if args.no_progress:  # datasets' download / cache-building bars too
        import datasets

        datasets.disable_progress_bars()
    data = load_data(args)
    return data, create_model(args, data.num_classes, data.in_chans)


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


def map_loaders(args: Any, data: Any, train_tf: Any, eval_tf: Any, shape: Tuple[int, ...], even: bool,
                pin_memory: bool) -> Tuple[ImageClassificationDataset, Any, Any]:
    """(train dataset, train loader, val loader) of map-style data, before accelerate shards them.

    What train_imagenet.py feeds its model; benchmarks/bench_data_pipeline.py times the train loader.
    """
    from torch.utils.data import DataLoader

    mode = "L" if data.in_chans == 1 else "RGB"
    common = dict(num_workers=args.workers, pin_memory=pin_memory)
    cols = (args.image_column, args.label_column)
    train_ds = ImageClassificationDataset(data.train, *cols, train_tf, mode, args.seed, data.label_ids)
    val_ds = ImageClassificationDataset(data.val, *cols, eval_tf, mode, args.seed, data.label_ids)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              collate_fn=Collate(shape, drop_bad=True, even=even), **common)
    val_loader = DataLoader(val_ds, batch_size=args.val_batch_size, shuffle=False,
                            collate_fn=Collate(shape, drop_bad=False), **common)
    return train_ds, train_loader, val_loader


def _build_map_loaders(args: Any, acc: Any, data: Any, train_tf: Any, eval_tf: Any, shape: Tuple[int, ...],
                       even: bool):
    train_ds, train_loader, val_loader = map_loaders(args, data, train_tf, eval_tf, shape, even,
                                                     pin_memory=acc.device.type == "cuda")
    train_loader, val_loader = acc.prepare(train_loader, val_loader)
    if len(train_loader) == 0:
        raise DataError(f"{data.train_len} training images are fewer than one batch per process "
                        f"({args.batch_size} x {acc.num_processes}); lower --batch-size")
    return train_ds, train_loader, val_loader, len(train_loader)


@dataclass
class Setup:
    """What the training loop needs besides the (prepared) model."""

    optimizer: Any
    scheduler: Any
    criterion: Callable
    mixup: Optional[Callable]
    data_cfg: Dict[str, Any]
    train_ds: Any
    train_loader: Any  # map-style: accelerate's prepared DataLoader; streaming: StreamingTrainLoader
    val_loader: Any
    batches: int  # training batches per process per epoch
    updates_per_epoch: int
    total_updates: int
    resume_from: Optional[Path] = None
    regs: Optional[Any] = None
    grid: Optional[GridRefresher] = None
    teacher: Optional[Teacher] = None
    frozen_norms: List[torch.nn.Module] = field(default_factory=list)
    peft: bool = False  # the model's KAN convs carry kan_zoo.peft adapters (merged at export)

    @property
    def streaming(self) -> bool:
        return isinstance(self.train_loader, StreamingTrainLoader)


def _check_resume(resume_from: Path, args: Any, data: Any) -> None:
    """The checkpoint belongs to this model and class list (a different one would train on silently)."""
    saved = json.loads((resume_from / STATE_FILE).read_text())
    if saved.get("model") and saved["model"] != args.model:
        raise CheckpointError(f"checkpoint {str(resume_from)!r} was trained with --model {saved['model']!r}, "
                              f"not {args.model!r}")
    names = saved.get("label_names")
    if names and data.label_names and list(names) != list(data.label_names):
        raise CheckpointError(f"checkpoint {str(resume_from)!r} was trained on the classes {names[:5]}... "
                              f"({len(names)}), the data now has {list(data.label_names)[:5]}... "
                              f"({len(data.label_names)}): not the same dataset")


def build_setup(args: Any, acc: Any, data: Any, model: torch.nn.Module, out: Path) -> Setup:
    """Model options, resume checks, transforms, teacher, loaders, optimizer and schedule (one stage)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    if args.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ModelError(f"{args.model!r} does not support --grad-checkpointing")
        model.set_grad_checkpointing(True)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    peft = apply_peft(model, args)  # before resuming: checkpoints of a PEFT run hold the wrapped model
    frozen_norms = freeze_backbone(model) if args.freeze_backbone else []
    resume_from = resolve_resume(args.resume, out)
    if resume_from is not None:
        _check_resume(resume_from, args, data)
        saved_grid = read_grid_state(resume_from)
        if saved_grid:  # grown grids must be re-grown before the optimizer and EMA see the parameters
            apply_grid_state(model, saved_grid)
    regs = build_regularizers(args, model)  # forward hooks go on before prepare() wraps the model
    grid = GridRefresher(args, acc, model) if args.grid_update_every else None
    train_tf, eval_tf, data_cfg = build_transforms(args, model, data.in_chans)
    teacher = build_teacher(args, data.num_classes, data.in_chans, data_cfg, acc.device)
    criterion, mixup = _build_criterion(args, data.num_classes)
    shape = tuple(data_cfg["input_size"])
    build = build_streaming_loaders if data.streaming else _build_map_loaders
    train_ds, train_loader, val_loader, batches = build(args, acc, data, train_tf, eval_tf, shape,
                                                        even=mixup is not None)

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
    return Setup(optimizer, scheduler, criterion, mixup, data_cfg, train_ds, train_loader, val_loader, batches,
                 upe, total_updates, resume_from, regs, grid, teacher, frozen_norms, peft)
