"""Sparsely gated mixture of KAN-conv experts (Shazeer et al. 2017, "Outrageously Large Neural Networks").

A gate looks at the globally average-pooled input of each sample, picks the ``top_k`` best of
``num_experts`` KAN convs (any basis, plain or bottleneck, 1D/2D/3D) and returns the sum of their
outputs weighted by the softmax of the chosen gate logits. While training, noise with a learned,
input-dependent scale is added to the logits before the choice (noisy top-k gating); in eval the
choice is deterministic. Each forward leaves a load-balancing loss in ``aux_loss``:
cv^2(importance) + cv^2(load), cv^2 = variance / mean^2 over the experts, which a training loop adds
to its loss with a small weight (:func:`moe_aux_loss` sums it over a model).

Each expert runs once per forward, on exactly the samples that chose it (a Python loop over the
experts, never over samples); an expert nobody chose runs on an empty batch, so that its parameters
stay in the autograd graph (zero gradient) and DistributedDataParallel needs no unused-parameter
search.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, NamedTuple, Optional, Union

import torch
from timm.layers import register_notrace_module
from torch import nn
from torch.nn import functional as F

from .bottleneck import kan_conv_class
from .conv import _IntOrTuple
from .helpers import check_input

__all__ = ["MoEKANConvNd", "MoEKANConv1d", "MoEKANConv2d", "MoEKANConv3d", "Routing", "cv_squared", "moe_aux_loss"]


class Routing(NamedTuple):
    """Which experts each sample uses, and how much each expert is used over the batch."""

    experts: torch.Tensor  # (N, top_k) int64: the chosen experts of each sample, best first
    weights: torch.Tensor  # (N, top_k): their gate values (summing to 1 per sample where renormalised)
    gates: torch.Tensor  # (N, E): the same gate values scattered over all experts (0 where not chosen)
    load: torch.Tensor  # (E,): samples per expert; while training with noise, its smooth estimate


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation of a 1-D tensor: unbiased variance / (mean^2 + eps); 0 for one value."""
    if values.numel() < 2:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + eps)


class MoEKANConvNd(nn.Module):
    """y(x) = sum over the top_k experts e chosen for x of g_e(x) * expert_e(x), g the softmax of their logits.

    Parameters follow KANConvNd (``in_channels``, ``out_channels``, ``kernel_size``, ``stride``,
    ``padding``, ``dilation``, ``groups``; ``conv_options`` such as ``basis``, ``degree``,
    ``norm_layer``, ``dropout`` and the basis's own options go to every expert), plus:

    Args:
        num_experts: E, the number of expert KAN convs.
        top_k: experts per sample (1 <= top_k <= E); top_k = E is a dense softmax mixture.
        noisy_gating: add the learned noise to the logits while training (Shazeer et al.'s noisy
            top-k gating); in eval, or with False, the choice uses the clean logits.
        noise_epsilon: floor of the noise scale, softplus(x W_noise) + noise_epsilon.
        renormalize: weight the chosen experts by the softmax over their own logits (Shazeer et al.;
            they sum to 1). False: by their probabilities in the softmax over all E logits (as the
            Switch Transformer), which keeps a task-loss gradient on the gate even for top_k = 1,
            where the renormalised weight is always 1.
        bottleneck: experts are BottleneckKANConvNd (then ``dim_reduction`` may be in conv_options).

    Parameters: ``w_gate`` (C_in, E) and ``w_noise`` (C_in, E), both zero at init as in the paper
    (uniform gate, noise of scale softplus(0) + eps ~ 0.70 while training), and ``experts.<e>.*``.
    After each forward, ``aux_loss`` holds cv^2(importance) + cv^2(load), importance being each
    expert's summed gate values over the batch and load its number of samples (while training with
    noise: the sum over samples of the probability that the expert is in the top k, which is smooth
    in the gate weights). It is unweighted; the reference code multiplies it by 1e-2.
    """

    ndim: ClassVar[int] = 0
    # kan_zoo.convert.convert_block_state_dict: the reference's Normal(0, 1) buffers have no counterpart.
    reference_dropped: ClassVar[tuple] = ("mean", "std")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrTuple,
        stride: _IntOrTuple = 1,
        padding: Union[str, _IntOrTuple] = 0,
        dilation: _IntOrTuple = 1,
        groups: int = 1,
        *,
        num_experts: int = 8,
        top_k: int = 2,
        noisy_gating: bool = True,
        noise_epsilon: float = 1e-2,
        renormalize: bool = True,
        bottleneck: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **conv_options: Any,
    ) -> None:
        super().__init__()
        for name, value in (("num_experts", num_experts), ("top_k", top_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if top_k > num_experts:
            raise ValueError(f"top_k ({top_k}) must be <= num_experts ({num_experts})")
        if noise_epsilon < 0:
            raise ValueError(f"noise_epsilon must be >= 0, got {noise_epsilon}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_experts, self.top_k = num_experts, top_k
        self.noisy_gating, self.noise_epsilon = bool(noisy_gating), float(noise_epsilon)
        self.renormalize = bool(renormalize)
        expert_cls = kan_conv_class(self.ndim, bottleneck)
        self.experts = nn.ModuleList(
            expert_cls(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                       device=device, dtype=dtype, **conv_options)
            for _ in range(num_experts)
        )
        factory = {"device": device, "dtype": dtype}
        self.w_gate = nn.Parameter(torch.zeros(in_channels, num_experts, **factory))
        self.w_noise = nn.Parameter(torch.zeros(in_channels, num_experts, **factory)) if noisy_gating else None
        self.aux_loss: Optional[torch.Tensor] = None

    # -- gating
    def route(self, x: torch.Tensor) -> Routing:
        """The gate's choice for each sample of x (N, C_in, *spatial); draws the noise in training mode."""
        pooled = x.mean(dim=tuple(range(2, x.ndim)))
        clean = pooled @ self.w_gate
        noisy = self.noisy_gating and self.training
        if noisy:
            noise_scale = F.softplus(pooled @ self.w_noise) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * noise_scale
        else:
            logits = clean
        k = self.top_k
        top_logits, top_experts = logits.topk(min(k + 1, self.num_experts), dim=1)
        experts = top_experts[:, :k]
        if self.renormalize:
            weights = torch.softmax(top_logits[:, :k], dim=1)
        else:
            weights = torch.softmax(logits, dim=1).gather(1, experts)
        gates = torch.zeros_like(logits).scatter(1, experts, weights)
        if noisy and k < self.num_experts:
            load = self._prob_in_top_k(clean, logits, noise_scale, top_logits).sum(0)
        else:
            load = (gates > 0).sum(0).to(gates.dtype)
        return Routing(experts, weights, gates, load)

    def _prob_in_top_k(self, clean: torch.Tensor, noisy: torch.Tensor, noise_scale: torch.Tensor,
                       top_noisy: torch.Tensor) -> torch.Tensor:
        """P(expert e is in sample n's top k) over a fresh draw of e's noise, the other logits held.

        For e inside the top k that takes beating the (k+1)-th largest noisy logit, for e outside the
        k-th largest; both thresholds are noisy logits (the reference compares its logits against the
        top softmax probabilities instead, mixing the two scales).
        """
        k = self.top_k
        threshold_if_in = top_noisy[:, k : k + 1]
        threshold_if_out = top_noisy[:, k - 1 : k]
        threshold = torch.where(noisy > threshold_if_in, threshold_if_in, threshold_if_out)
        return torch.special.ndtr((clean - threshold) / noise_scale)

    # -- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.ndim, self.in_channels)
        routing = self.route(x)
        self.aux_loss = cv_squared(routing.gates.sum(0)) + cv_squared(routing.load)
        return self.combine(x, routing)

    def combine(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """sum_j weights[n, j] * expert_{experts[n, j]}(x[n]), each expert run once on its samples."""
        n, k = routing.experts.shape
        if k == self.num_experts:  # dense: every expert sees the whole batch, no gathering needed
            outputs = torch.stack([expert(x) for expert in self.experts], 1)  # (n, E, ...)
            return torch.einsum("ne...,ne->n...", outputs, routing.gates.to(outputs.dtype))
        # Assignment a = n * k + j (sample n's j-th choice), sorted by expert: consecutive runs per expert.
        chosen = routing.experts.reshape(-1)
        order = chosen.argsort(stable=True)
        counts = torch.bincount(chosen, minlength=self.num_experts).tolist()  # one host sync per forward
        parts = x.index_select(0, order // k).split(counts)
        outputs = torch.cat([expert(part) for expert, part in zip(self.experts, parts)])
        # Back to assignment order, then each sample's k outputs weighted and summed (no scatter-add:
        # the same sums in the same order on every device).
        outputs = outputs.index_select(0, order.argsort()).unflatten(0, (n, k))
        return torch.einsum("nk...,nk->n...", outputs, routing.weights.to(outputs.dtype))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, num_experts={self.num_experts}, top_k={self.top_k}, "
                f"noisy_gating={self.noisy_gating}")

    def __getstate__(self) -> Dict[str, Any]:
        # copy.deepcopy (e.g. an EMA copy) cannot copy a tensor that is part of a graph: aux_loss is
        # the last forward's, and a copy has had no forward.
        state = self.__dict__.copy()
        state["aux_loss"] = None
        return state


@register_notrace_module
class MoEKANConv1d(MoEKANConvNd):
    ndim = 1


@register_notrace_module
class MoEKANConv2d(MoEKANConvNd):
    ndim = 2


@register_notrace_module
class MoEKANConv3d(MoEKANConvNd):
    ndim = 3


def moe_aux_loss(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of the ``aux_loss`` every MoEKANConvNd of ``model`` left in its last forward; None without any.

    Call it right after the model's forward, where the task loss is assembled:
    ``loss = task_loss + weight * moe_aux_loss(model)`` (the reference's weight is 1e-2).
    """
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoEKANConvNd) and m.aux_loss is not None]
    if not losses:
        return None
    return torch.stack([loss.float() for loss in losses]).sum()
