"""Knowledge distillation: a frozen timm teacher whose softened predictions the student also fits.

The teacher is any timm model (kan_* included): ``--teacher NAME`` with its published weights,
``--teacher-path`` for weights on disk (a kan_zoo / timm export folder, or a .safetensors / .pth
file with ``--teacher NAME`` for the architecture). It must predict the data's classes. timm's
``DistillationTeacher`` holds it (eval mode, and the input re-normalised when the teacher was
trained with other mean/std); the loss is timm's ``LogitDistillationTask`` term,
KL(teacher || student) at temperature T, times T^2, in its complementary weighting
``(1 - alpha) * task + alpha * distill``.

The teacher sees exactly the student's input, after mixup / cutmix: its soft targets describe the
mixed image, as in timm and DeiT. It runs under the same autocast, without gradients, and is not
part of checkpoints or exports: a resume builds it again from the same flags.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import ModelError, _check_name, _pretrained_cfg, resolve_pretrained_path

__all__ = ["Teacher", "build_teacher", "distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (timm's kd_loss)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def _stats(values: Sequence[float], in_chans: int) -> torch.Tensor:
    values = [float(v) for v in values]
    if len(values) != in_chans:  # e.g. RGB statistics of a teacher fed grayscale: average them, as the data does
        values = [sum(values) / len(values)] * in_chans
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class Teacher(nn.Module):
    """A frozen teacher in eval mode; ``forward(x)`` gives its logits for the student's input ``x``."""

    def __init__(self, model: nn.Module, student_mean: Sequence[float], student_std: Sequence[float],
                 in_chans: int) -> None:
        super().__init__()
        from timm.task.distillation import DistillationTeacher

        model.requires_grad_(False)
        self.wrapped = DistillationTeacher(model)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        # timm reads the teacher's own mean/std; fit their length to the data's channels (still buffers)
        self.wrapped.mean_kd = _stats(cfg.get("mean", student_mean), in_chans)
        self.wrapped.std_kd = _stats(cfg.get("std", student_std), in_chans)
        self.register_buffer("student_mean", _stats(student_mean, in_chans), persistent=False)
        self.register_buffer("student_std", _stats(student_std, in_chans), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always eval: dropout off, norm statistics frozen

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped(self.wrapped.normalize_input(x, self.student_mean, self.student_std))


def _create(args: Any, num_classes: int, in_chans: int) -> nn.Module:
    import timm

    path = args.teacher_path
    if path and not os.path.exists(path):
        raise ModelError(f"--teacher-path {path!r} does not exist")
    if path and os.path.isdir(path):
        resolve_pretrained_path(path, args.teacher or "", flag="--teacher-path")  # weights there, right arch
        try:
            return timm.create_model(f"local-dir:{os.path.abspath(path)}", pretrained=True)
        except Exception as e:
            raise ModelError(f"could not load the teacher from {path!r}: {type(e).__name__}: {e}") from e
    if not args.teacher:
        raise ModelError("--teacher-path to a weights file needs --teacher NAME for the architecture")
    _check_name(args.teacher, flag="--teacher")
    overlay: Dict[str, Any] = {}
    cfg = _pretrained_cfg(args.teacher)
    if path:
        overlay = dict(file=os.path.abspath(path), num_classes=num_classes)
    elif not any(cfg.get(k) for k in ("hf_hub_id", "url", "file", "state_dict")):
        raise ModelError(f"--teacher {args.teacher!r} has no published weights; train it first and pass the "
                         f"export folder as --teacher-path")
    elif cfg.get("num_classes") not in (None, num_classes):
        raise ModelError(f"--teacher {args.teacher!r}: its published head has {cfg['num_classes']} classes but the "
                         f"data has {num_classes}; a teacher must predict the data's classes (fine-tune it with "
                         f"--pretrained --reset-head first, then pass --teacher-path)")
    try:
        return timm.create_model(args.teacher, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                 pretrained_cfg_overlay=overlay or None)
    except Exception as e:
        raise ModelError(f"could not load the teacher {args.teacher!r}: {type(e).__name__}: {e}") from e


def build_teacher(args: Any, num_classes: int, in_chans: int, data_cfg: Dict[str, Any],
                  device: Optional[torch.device] = None) -> Optional[Teacher]:
    """The --teacher / --teacher-path model, checked against the data; None without those flags."""
    if not (args.teacher or args.teacher_path):
        return None
    model = _create(args, num_classes, in_chans)
    got = getattr(model, "num_classes", None)
    if got != num_classes:
        raise ModelError(f"the teacher predicts {got} classes but the data has {num_classes}")
    got_chans = (model.pretrained_cfg.get("input_size") or (in_chans,))[0]
    if got_chans != in_chans:
        raise ModelError(f"the teacher takes {got_chans}-channel images but the data has {in_chans} channel(s)")
    teacher = Teacher(model, data_cfg["mean"], data_cfg["std"], in_chans)
    return teacher.to(device) if device is not None else teacher
