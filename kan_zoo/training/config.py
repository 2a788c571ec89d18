"""Command-line options of train_imagenet.py.

Defaults reproduce the recipe behind the published VGG11 gram weights (torch-conv-kan's
imagenet1k config): AdamW lr 9e-4, weight decay 5e-6, 7500 warmup steps, polynomial decay
(power 0.3) to 1e-7, label smoothing 0.05, 200 epochs at 224 px, batch 16 x 8 accumulation,
gradient clipping at 2.0, seed 42.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

__all__ = ["ConfigError", "build_parser", "parse_args", "peft_enabled"]


class ConfigError(ValueError):
    """An option that cannot work here (missing tracker package, no Hub token...), found before training."""


def _floats(n: int):
    return dict(type=float, nargs=n, metavar="F")


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting: the script prints one
    ``error:`` line (once, under several processes) for bad flags as for any other bad input."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="train_imagenet.py",
        description="Train any timm / kan_zoo image classifier on a Hugging Face dataset with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="ILSVRC/imagenet-1k",
                   help="Hub dataset name, a local image folder, a save_to_disk folder, or parquet file(s)/folder")
    d.add_argument("--dataset-config", default=None, help="Hub dataset configuration name")
    d.add_argument("--data-format", default="auto", choices=["auto", "hub", "imagefolder", "disk", "parquet"],
                   help="how to read --dataset; auto guesses from what the path holds")
    d.add_argument("--train-split", default="train")
    d.add_argument("--val-split", default="validation")
    d.add_argument("--image-column", default="image")
    d.add_argument("--label-column", default="label")
    d.add_argument("--num-classes", type=int, default=None,
                   help="number of classes; read from the label feature (or the labels) when omitted")
    d.add_argument("--in-chans", type=int, default=None, choices=[1, 3],
                   help="image channels; guessed from the first training images when omitted")
    d.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    d.add_argument("--shuffle-buffer", type=int, default=10_000, help="shuffle buffer for --streaming")
    d.add_argument("--train-samples", type=int, default=None,
                   help="training set size for --streaming when the dataset info does not say")
    d.add_argument("--cache-dir", default=None, help="datasets cache directory")
    d.add_argument("--workers", type=int, default=8, help="DataLoader workers per process")

    a = p.add_argument_group("augmentation")
    a.add_argument("--img-size", type=int, default=224)
    a.add_argument("--crop-pct", type=float, default=None, help="eval centre-crop fraction (model default)")
    a.add_argument("--interpolation", default=None, help="model default when omitted")
    a.add_argument("--mean", **_floats(3), default=None)
    a.add_argument("--std", **_floats(3), default=None)
    a.add_argument("--scale", **_floats(2), default=(0.08, 1.0), help="RandomResizedCrop area range")
    a.add_argument("--ratio", **_floats(2), default=(3 / 4, 4 / 3), help="RandomResizedCrop aspect range")
    a.add_argument("--hflip", type=float, default=0.5)
    a.add_argument("--color-jitter", type=float, default=0.0)
    a.add_argument("--auto-augment", default=None,
                   help="timm policy string, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment) or 'original' (AutoAugment)")
    a.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    a.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    a.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0 = off)")
    a.add_argument("--mixup-prob", type=float, default=1.0)
    a.add_argument("--mixup-switch-prob", type=float, default=0.5)
    a.add_argument("--smoothing", type=float, default=0.05, help="label smoothing")

    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help="any registered timm model name (kan_* after import kan_zoo)")
    m.add_argument("--pretrained", action="store_true", help="start from the model's published weights")
    m.add_argument("--pretrained-file", "--pretrained-path", dest="pretrained_file", default=None,
                   help="start from these weights: a .safetensors / .pth file, or a folder exported by kan_zoo "
                        "(model.safetensors + config.json), read offline")
    m.add_argument("--reset-head", action="store_true",
                   help="with --pretrained: re-initialise the classifier when its class count differs from the data")
    m.add_argument("--drop-rate", type=float, default=None)
    m.add_argument("--drop-path", type=float, default=None)
    m.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra create_model keyword arguments (values parsed as Python literals)")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the classifier (get_classifier()); the frozen part's norm layers stay in "
                        "eval mode, so their running statistics do not move either")
    m.add_argument("--grad-checkpointing", action="store_true")
    m.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    m.add_argument("--channels-last", action="store_true",
                   help="weights and input batches in channels-last (NHWC) memory format, as timm's --channels-last: "
                        "faster convolutions on recent GPUs, above all under --mixed-precision bf16")

    t = p.add_argument_group("knowledge distillation (kan_zoo.training.distill)")
    t.add_argument("--teacher", default=None, metavar="NAME",
                   help="timm model name of a frozen teacher (kan_* too); its published weights unless "
                        "--teacher-path gives them. It must predict the data's classes")
    t.add_argument("--teacher-path", default=None,
                   help="teacher weights on disk: a folder exported by kan_zoo / timm (its config names the "
                        "architecture), or a .safetensors / .pth file with --teacher NAME")
    t.add_argument("--distill-alpha", type=float, default=None,
                   help="weight of the distillation term: loss = (1 - a) * task + a * KL(teacher || student) "
                        "* T^2 (default 0.5 with a teacher)")
    t.add_argument("--distill-temperature", type=float, default=None,
                   help="softmax temperature T of both models' logits in the distillation term (default 4)")

    f = p.add_argument_group("parameter-efficient fine-tuning of pretrained KAN convs (kan_zoo.peft; docs/peft.md)")
    f.add_argument("--peft-extra-degrees", type=int, default=None, metavar="N",
                   help="freeze the pretrained weights and train N zero-initialised higher degrees per KAN conv "
                        "(with the norms and the head); the export is the merged model of degree D + N")
    f.add_argument("--peft-trainable-degrees", type=int, nargs="+", default=None, metavar="D",
                   help="also train zero-initialised deltas on these pretrained degrees (alone: no extra degrees)")
    f.add_argument("--peft-train-base", action="store_true", help="also train a delta on the base branch")
    f.add_argument("--peft-train-norms", action=argparse.BooleanOptionalAction, default=True,
                   help="train the norm layers' affine parameters too")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=200)
    o.add_argument("--batch-size", type=int, default=16, help="per process")
    o.add_argument("--val-batch-size", type=int, default=None, help="per process; defaults to 2x --batch-size")
    o.add_argument("--grad-accum", type=int, default=8, help="gradient accumulation steps")
    o.add_argument("--opt", default="adamw", help="any timm optimizer name")
    o.add_argument("--lr", type=float, default=9e-4)
    o.add_argument("--weight-decay", type=float, default=5e-6)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--opt-eps", type=float, default=None)
    o.add_argument("--opt-betas", **_floats(2), default=None)
    o.add_argument("--layer-decay", type=float, default=None,
                   help="layer-wise lr decay (timm, via the model's group_matcher): layer i of n gets "
                        "lr * decay**(n-1-i), the head the full lr")
    o.add_argument("--basis-lr-mult", type=float, default=1.0,
                   help="lr multiplier of the KAN basis coefficients (and basis parameters) vs other weights")
    o.add_argument("--basis-wd-mult", type=float, default=1.0,
                   help="weight-decay multiplier of the KAN basis coefficients vs other weights")
    o.add_argument("--clip-grad", type=float, default=2.0, help="max gradient norm (0 = off)")
    o.add_argument("--sched", default="poly", help="timm scheduler: poly, cosine, step, ...")
    o.add_argument("--poly-power", type=float, default=0.3, help="power of the poly decay")
    o.add_argument("--decay-rate", type=float, default=0.1, help="decay rate of the step schedulers")
    o.add_argument("--min-lr", type=float, default=1e-7)
    o.add_argument("--warmup-steps", type=int, default=7500, help="linear warmup, in optimizer updates")
    o.add_argument("--warmup-lr", type=float, default=0.0)
    o.add_argument("--cpu", action="store_true",
                   help="train on the CPU even where a GPU is present (several processes talk over gloo)")
    o.add_argument("--reuse-cpu-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="on CPU, keep freed tensor memory for the next steps instead of faulting in fresh pages "
                        "(kan_zoo.reuse_cpu_memory; glibc only)")
    o.add_argument("--cpu-kernels", action=argparse.BooleanOptionalAction, default=False,
                   help="on CPU, run the morlet wavelet node's chunks as compiled kernels (torch.compile; needs a "
                        "C++ compiler, compiles for seconds at the first step). bspline, relu, rbf and the other "
                        "wavelets use C kernels by default instead (KAN_ZOO_NATIVE_KERNELS=0 turns those off)")
    o.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    o.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="keep an EMA of the weights (timm ModelEmaV3) and validate it too")
    o.add_argument("--model-ema-decay", type=float, default=0.9998)
    o.add_argument("--model-ema-warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="ramp the EMA decay up over the first updates")
    o.add_argument("--seed", type=int, default=42)

    k = p.add_argument_group("KAN training aids (kan_zoo.regularizers, kan_zoo.grid)")
    k.add_argument("--reg-smoothness", type=float, default=0.0,
                   help="weight of the squared second differences of the basis coefficients (0 = off)")
    k.add_argument("--reg-l1-weights", type=float, default=0.0, help="weight of mean |basis coefficient| (0 = off)")
    k.add_argument("--reg-act-l1", type=float, default=0.0, help="weight of mean |KAN layer output| (0 = off)")
    k.add_argument("--reg-act-l2", type=float, default=0.0, help="weight of mean KAN layer output^2 (0 = off)")
    k.add_argument("--moe-aux-weight", type=float, default=1e-2,
                   help="weight of the load-balancing loss of mixture-of-experts KAN layers "
                        "(kan_zoo.layers.MoEKANConvNd; the reference's 1e-2), logged as train/reg_moe_aux")
    k.add_argument("--grid-update-every", type=int, default=0,
                   help="refit the grids of bspline/rbf/relu KAN layers to the current batch every N updates "
                        "(0 = off); the EMA restarts from the model's weights after each refit")
    k.add_argument("--grid-grow", type=int, default=0,
                   help="grid cells added per refit (single process only: it replaces parameters)")
    k.add_argument("--grid-max-size", type=int, default=None, help="cap of the grid size when growing")
    k.add_argument("--grid-eps", type=float, default=0.02,
                   help="bspline knots: 1 = uniform over the input range, 0 = input quantiles")

    c = p.add_argument_group("checkpoints, logging, export")
    c.add_argument("--output", default="outputs/train", help="run directory (checkpoints, logs, export)")
    c.add_argument("--checkpoint-steps", type=int, default=5000, help="checkpoint every N optimizer updates (0 = off)")
    c.add_argument("--keep-checkpoints", type=int, default=3, help="how many recent checkpoints to keep")
    c.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from a checkpoint folder, or the latest complete one in --output")
    c.add_argument("--log-with", default="csv", help="comma-separated trackers: csv, tensorboard, wandb, ... or none")
    c.add_argument("--log-every", type=int, default=50, help="log training metrics every N updates")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--export-dir", default=None, help="Hub-ready folder; defaults to OUTPUT/export")
    c.add_argument("--export-weights", default="auto", choices=["auto", "model", "ema"],
                   help="which weights to export; auto takes the better final top-1")
    c.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the exported model there")
    c.add_argument("--license", default="mit",
                   help="licence of the exported weights (a Hub licence id, written to config.json and the model "
                        "card); mind the dataset's terms, e.g. ImageNet's non-commercial research licence")
    # Test hook: stop abruptly after this many updates, with no final save, like a kill.
    c.add_argument("--crash-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    # Test hook: send ourselves SIGTERM (a preemption notice) after this update.
    c.add_argument("--signal-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    # Test hook: append each update's training sample ids (image paths) to FILE.<rank> as JSON lines.
    c.add_argument("--record-samples", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.val_batch_size is None:
        args.val_batch_size = 2 * args.batch_size
    for name in ("epochs", "batch_size", "val_batch_size", "grad_accum", "img_size", "keep_checkpoints"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("reg_smoothness", "reg_l1_weights", "reg_act_l1", "reg_act_l2", "grid_update_every",
                 "grid_grow", "basis_wd_mult", "moe_aux_weight"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.basis_lr_mult <= 0:
        raise ConfigError(f"--basis-lr-mult must be > 0, got {args.basis_lr_mult}")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        raise ConfigError(f"--layer-decay must be in (0, 1], got {args.layer_decay}")
    if not 0 <= args.grid_eps <= 1:
        raise ConfigError(f"--grid-eps must be in [0, 1], got {args.grid_eps}")
    if (args.grid_grow or args.grid_max_size is not None) and not args.grid_update_every:
        raise ConfigError("--grid-grow / --grid-max-size need --grid-update-every N > 0")
    _check_peft(args)
    if args.mixup > 0 or args.cutmix > 0:
        if args.batch_size % 2:
            raise ConfigError("mixup/cutmix need an even --batch-size")
    _check_distillation(args)
    return args


def _check_distillation(args: argparse.Namespace) -> None:
    has_teacher = bool(args.teacher or args.teacher_path)
    for name, default in (("distill_alpha", 0.5), ("distill_temperature", 4.0)):
        if getattr(args, name) is None:
            setattr(args, name, default if has_teacher else 0.0 if name == "distill_alpha" else 1.0)
        elif not has_teacher:
            raise ConfigError(f"--{name.replace('_', '-')} needs a teacher (--teacher NAME or --teacher-path)")
    if not 0 <= args.distill_alpha <= 1:
        raise ConfigError(f"--distill-alpha must be in [0, 1], got {args.distill_alpha}")
    if args.distill_temperature <= 0:
        raise ConfigError(f"--distill-temperature must be > 0, got {args.distill_temperature}")


def peft_enabled(args: argparse.Namespace) -> bool:
    return args.peft_extra_degrees is not None or args.peft_trainable_degrees is not None


def _check_peft(args: argparse.Namespace) -> None:
    if not peft_enabled(args):
        if args.peft_train_base or not args.peft_train_norms:
            raise ConfigError("--peft-train-base / --no-peft-train-norms need --peft-extra-degrees or "
                             "--peft-trainable-degrees")
        return
    if args.peft_extra_degrees is not None and args.peft_extra_degrees < 0:
        raise ConfigError(f"--peft-extra-degrees must be >= 0, got {args.peft_extra_degrees}")
    if not (args.pretrained or args.pretrained_file):
        raise ConfigError("--peft-* fine-tunes pretrained weights: pass --pretrained or --pretrained-path")
    if args.freeze_backbone:
        raise ConfigError("--freeze-backbone and --peft-* choose the trained parameters differently; pick one")
