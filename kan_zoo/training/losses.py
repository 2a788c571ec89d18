"""The training loss, assembled in one place from named terms.

    total = (1 - alpha) * task + alpha * distill + sum(extra terms)

``task`` is the classification loss (label smoothing / mixup soft targets), ``distill`` the
teacher term (alpha = --distill-alpha, 0 without a teacher), and the extra terms are already
weighted penalties such as the KAN regularisers. Every term is logged under its own name
(train/loss is the task loss, train/loss_distill, train/reg_*), and train/loss_total is the value
that was back-propagated whenever it differs from the task loss.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

__all__ = ["assemble_loss"]


def assemble_loss(task: torch.Tensor, distill: Optional[torch.Tensor] = None, alpha: float = 0.0,
                  extra: Optional[Mapping[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(total loss to back-propagate, {log name: detached term}); log names are train/<name>, and
    ``loss_total`` (the total) is among them when there is more than the task loss."""
    terms: Dict[str, torch.Tensor] = {"loss": task.detach()}
    if distill is None:
        total = task
    else:
        total = (1.0 - alpha) * task + alpha * distill
        terms["loss_distill"] = distill.detach()
    for name, term in (extra or {}).items():
        total = total + term
        terms[name] = term.detach()
    if len(terms) > 1:
        terms["loss_total"] = total.detach()
    return total, terms
