"""KAN-conv VGG: VGG 11/13/16/19 whose 3x3 convolutions are Kolmogorov-Arnold convolutions.

Layout (that of torch-conv-kan's VGG, so its checkpoints convert key for key)::

    features   = [KAN 3x3, MaxPool 2x2, KAN 3x3, MaxPool, ...]   # no pool after the last stage
    head       = global average pool -> dropout -> linear         # ``head.fc``

Six stages with the widths of the reference "v4" family doubled, (32, 64, 128, 256, 256, 512);
five max pools, so the output stride is 32 and the stage outputs have reductions 1..32.
Layers per stage, as classic VGG adds them, carried over to the sixth stage:

    vgg11 (1, 1, 2, 2, 2, 2)   vgg13 (2, 2, 2, 2, 2, 2)   vgg16 (2, 2, 3, 3, 3, 3)   vgg19 (2, 2, 4, 4, 4, 4)

Models (timm names; ``<basis>`` is every name in ``kan_zoo.layers.BASES``):

* ``kan_vgg{11,13,16,19}_<basis>``
* ``kan_vgg11_slim_gram``: the reference "v2" widths (32, 64, 128, 256, 256, 256).
* ``kan_vgg11_bottleneck_gram``: bottleneck Gram layers (dim_reduction 8), BatchNorm.
* ``kan_test_vgg_<basis>``: widths 8, M, 16, M, 32, BatchNorm, no dropout; for contract tests and
  small demos (e.g. 32 px digits with ``in_chans=1``; inputs >= 4 px, >= 8 px to train on batch 1).

``kan_vgg11_gram``, ``kan_vgg11_slim_gram`` and ``kan_vgg11_bottleneck_gram`` are the architectures
of the torch-conv-kan ImageNet-1k checkpoints; their ``.in1k`` tags load them (see
``PRETRAINED_WEIGHTS`` and ``kan_zoo.convert.vgg``).

Per-basis defaults (``BASIS_DEFAULTS``; any of them can be overridden as a model kwarg):

* gram: degree 5, affine InstanceNorm, basis dropout 0.15 on every layer but the first (as the
  ImageNet checkpoints were trained); the bottleneck variant uses BatchNorm and noise injection 0.05.
* chebyshev, legendre, jacobi, bernstein, bspline (spline order), relu (k): degree 3, affine InstanceNorm.
* rbf: grid_size 8 (degree does not apply); its norm is an affine InstanceNorm over the layer INPUT.
* wavelet: mexican hat, BatchNorm, and ``group_width=16`` (groups = gcd(C_in, C_out, C_in // 16)).
  The wavelet basis is not separable: each layer builds a (C_out x C_in / groups) x H x W tensor.
  Ungrouped, VGG11 at 224 px makes about 230 M such values per image (0.9 GB in float32, several
  times that kept for backward); with groups of 16 input channels it is about 38 M (0.15 GB), at
  the price of a much smaller model (1.3 M parameters). Use ``group_width=None`` only on small inputs.

Input size: InstanceNorm needs more than one spatial element, so the map after the last pool must
have >= 2 elements (64 x 64 for the 224-px VGGs); smaller inputs raise a ValueError naming the minimum.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import ClassifierHead, register_notrace_function, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ..errors import CorruptCheckpointError, HubFileNotCachedError
from ..layers import BASES, BottleneckKANConv2d, KANConv2d
from ..layers.bottleneck import inner_width
from ..layers.helpers import NormSpec
from ._common import FeatureTapsMixin, HeadFcMixin, check_model_args, run_stages
from ._registry import kan_cfg, model_name, register_entry_points

__all__ = [
    "KanVgg", "VGG_DEPTHS", "VGG_WIDTHS", "BASIS_DEFAULTS", "PRETRAINED_WEIGHTS", "MODEL_ARGS",
    "min_input_size", "check_vgg_input",
]

# Layers per stage. One max pool sits between consecutive stages.
VGG_DEPTHS: Dict[str, Tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4, 4),
    "test_vgg": (1, 1, 1),
}
# Stage widths: reference "v4" and "v2" families with width_scale 2, and the tiny test network.
VGG_WIDTHS: Dict[str, Tuple[int, ...]] = {
    "v4": (32, 64, 128, 256, 256, 512),
    "v2": (32, 64, 128, 256, 256, 256),
    "test": (8, 16, 32),
}

# Per-basis layer settings of the kan_vgg models; a model kwarg of the same name overrides them.
BASIS_DEFAULTS: Dict[str, Dict[str, Any]] = {
    name: dict(degree=3, norm_layer="instance_affine", kan_dropout=0.0) for name in BASES
}
BASIS_DEFAULTS["gram"] = dict(degree=5, norm_layer="instance_affine", kan_dropout=0.15)
BASIS_DEFAULTS["wavelet"] = dict(degree=3, norm_layer="batch", kan_dropout=0.0, group_width=16)

# The torch-conv-kan ImageNet-1k checkpoints (MIT). Accuracy as reported by their authors on the
# ImageNet-1k validation set at 224 px (resize 256, centre crop); params counted on our model.
PRETRAINED_WEIGHTS: Dict[str, Dict[str, Any]] = {
    "kan_vgg11_gram.in1k": dict(
        hf_hub_id="brivangl/vgg_kagn11_v4", top1=61.17, top5=83.26, params=41_424_516,
    ),
    "kan_vgg11_bottleneck_gram.in1k": dict(
        hf_hub_id="brivangl/vgg_kagn_bn11_v4", top1=68.50, top5=88.46, params=7_252_115,
    ),
    "kan_vgg11_slim_gram.in1k": dict(
        hf_hub_id="brivangl/vgg_kagn11_v2", top1=59.10, top5=82.29, params=24_652_420,
    ),
}
# How the reference trained them (torch-conv-kan's imagenet1k config); it goes into the model cards.
REFERENCE_RECIPE = (
    "torch-conv-kan's ImageNet-1k recipe (the reference's, not re-run here): AdamW, lr 9e-4, weight decay "
    "5e-6, 7500 linear warmup steps, polynomial decay (power 0.3) to 1e-7, label smoothing 0.05, "
    "200 epochs at 224 px"
)


@register_notrace_module
class _StemBottleneckKANConv2d(BottleneckKANConv2d):
    """A bottleneck KAN conv whose inner width is given instead of derived from in_channels.

    The first layer's inner width is min(16, c, o) for narrow inputs, so it would change with
    in_chans; fixing it to the RGB value keeps the pretrained weights transferable to 1 or 4 channels.
    """

    def __init__(self, *args: Any, inner: int, **kwargs: Any) -> None:
        self._fixed_inner = inner
        super().__init__(*args, **kwargs)

    def _core_shape(self):
        self.inner = self._fixed_inner  # runs before the parameters are created
        return super()._core_shape()


@register_notrace_function  # a graph node under FX (torch.fx skips autowrapping names starting with _)
def check_vgg_input(
    x: torch.Tensor, in_chans: int, num_pools: int, last_norm: Optional[str], training: bool
) -> torch.Tensor:
    """Clear errors for inputs the network cannot take, rather than a failure deep inside a layer.

    ``last_norm`` is the norm of the last stage: 'instance' needs more than one spatial element per
    sample, 'batch' (in training) more than one value per channel over the batch.
    """
    if x.ndim != 4:
        raise ValueError(f"KanVgg expects an (N, C, H, W) input, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"KanVgg was built for in_chans={in_chans} input channels, got an input with {x.shape[1]} "
            f"channels (shape {tuple(x.shape)}); create the model with in_chans={x.shape[1]}"
        )
    # No int(): under torch.export / ONNX export the sizes stay symbolic, and the batch is read only
    # when BatchNorm trains, so an eval-mode graph keeps its batch dimension dynamic.
    height, width = x.shape[2], x.shape[3]
    final_h, final_w = height // 2**num_pools, width // 2**num_pools
    why = ""
    if min(final_h, final_w) < 1:
        why = ""
    elif last_norm == "instance" and final_h * final_w < 2:
        why = " and InstanceNorm needs more than one spatial element"
    elif last_norm == "batch" and training and x.shape[0] * final_h * final_w < 2:
        why = " and BatchNorm in training needs more than one value per channel (or use a batch of >= 2)"
    else:
        return x
    side = min_input_size(num_pools, last_norm == "instance" or (last_norm == "batch" and training))
    raise ValueError(
        f"input of {height}x{width} is too small for this KanVgg: its {num_pools} max pools reduce it to "
        f"{final_h}x{final_w}{why}; the minimum input size is {side}x{side}"
    )


def min_input_size(num_pools: int, needs_two_elements: bool) -> int:
    """Smallest square input side: every pool needs >= 1 pixel, a per-sample norm >= 2 at the end."""
    return 2 ** (num_pools + int(needs_two_elements))


def _device_dtype(model: nn.Module) -> Dict[str, Any]:
    weight = model.features[0].weight
    return dict(device=weight.device, dtype=weight.dtype)


def _norm_kind(layer: nn.Module) -> Optional[str]:
    for module in layer.modules():
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            return "instance"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return "batch"
    return None


class KanVgg(FeatureTapsMixin, HeadFcMixin, nn.Module):
    """VGG of KAN convolutions (see the module docstring for the layout and defaults).

    Args:
        depths: KAN layers per stage; stages are separated by 2x2 max pools.
        widths: output channels of each stage.
        basis: a name in kan_zoo.layers.BASES.
        num_classes: classifier outputs; 0 for a feature extractor (``head.fc`` is Identity).
        in_chans: image channels.
        global_pool: timm pool type of the head ('avg', 'max', 'avgmax', 'catavgmax', '' for none).
        drop_rate: dropout before the classifier (the reference checkpoints used 0.25).
        degree: basis degree (polynomial degree, spline order or ReLU-KAN k).
        norm_layer: norm of every KAN layer: 'batch', 'instance', 'instance_affine', None or a callable.
        kan_dropout: channel dropout on the basis input of every layer but the first.
        bottleneck: use bottleneck KAN layers (polynomial bases only).
        dim_reduction: bottleneck inner width reduction.
        noise_injection: bottleneck training noise on the input of every layer but the first.
        group_width: channels per conv group (groups = in_channels // group_width where that divides
            both widths, else 1); None for ungrouped layers.
        basis_options: extra basis arguments (e.g. grid_size, wavelet_type).
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        basis: str = "gram",
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.25,
        degree: int = 3,
        norm_layer: NormSpec = "instance_affine",
        kan_dropout: float = 0.0,
        bottleneck: bool = False,
        dim_reduction: float = 8.0,
        noise_injection: float = 0.0,
        group_width: Optional[int] = None,
        basis_options: Optional[Dict[str, Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths) or not depths or min(depths) < 1:
            raise ValueError(f"depths and widths must be equal-length and depths >= 1, got {depths}, {widths}")
        check_model_args(in_chans)
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.basis_name = basis
        self.grad_checkpointing = False
        self.num_pools = len(depths) - 1

        layers: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = []
        self.stage_ends: List[int] = []  # index into self.features of each stage's last layer
        channels = in_chans
        for stage, (depth, width) in enumerate(zip(depths, widths)):
            if stage > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for _ in range(depth):
                first = not layers
                layers.append(self._make_layer(
                    channels, width, first, basis=basis, degree=degree, norm_layer=norm_layer,
                    kan_dropout=kan_dropout, bottleneck=bottleneck, dim_reduction=dim_reduction,
                    noise_injection=noise_injection, group_width=group_width,
                    basis_options=dict(basis_options or {}), dd=dd,
                ))
                channels = width
            self.stage_ends.append(len(layers) - 1)
            self.feature_info.append(
                dict(num_chs=channels, reduction=2**stage, module=f"features.{len(layers) - 1}")
            )
        self.features = nn.Sequential(*layers)
        # The norm of the last (smallest) stage decides the smallest input; see check_vgg_input.
        self.last_norm = _norm_kind(self.features[-1])

        self.num_features = self.head_hidden_size = channels
        self.head = ClassifierHead(channels, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

    @staticmethod
    def _make_layer(
        in_channels: int, out_channels: int, first: bool, *, basis: str, degree: int, norm_layer: NormSpec,
        kan_dropout: float, bottleneck: bool, dim_reduction: float, noise_injection: float,
        group_width: Optional[int], basis_options: Dict[str, Any], dd: Dict[str, Any],
    ) -> nn.Module:
        groups = 1
        if group_width:
            candidate = max(1, in_channels // group_width)
            groups = math.gcd(math.gcd(in_channels, out_channels), candidate)
        common = dict(basis=basis, degree=degree, norm_layer=norm_layer, **basis_options, **dd)
        if not bottleneck:
            return KANConv2d(
                in_channels, out_channels, 3, padding=1, groups=groups,
                dropout=0.0 if first else kan_dropout, **common,
            )
        bottleneck_args = dict(
            dim_reduction=dim_reduction, noise_injection=0.0 if first else noise_injection, **common
        )
        if first and groups == 1:
            # Inner width as for an RGB input, so that in_chans can change without changing it.
            inner = inner_width(3, out_channels, dim_reduction)
            return _StemBottleneckKANConv2d(in_channels, out_channels, 3, padding=1, inner=inner, **bottleneck_args)
        return BottleneckKANConv2d(
            in_channels, out_channels, 3, padding=1, groups=groups, dropout=kan_dropout, **bottleneck_args
        )

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^features\.0", blocks=r"^features\.(\d+)")

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.head_hidden_size = self.head.num_features

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        return check_vgg_input(x, self.in_chans, self.num_pools, self.last_norm, self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.features, x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _forward_taps(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        # Tap i is the output of stage i (reduction 2**i), taken before the next max pool.
        end = self.stage_ends[max_index] + 1 if stop_early else len(self.features)
        taps = [self.stage_ends[i] for i in take_indices]
        return run_stages(self.features[:end], self._check(x), taps, self.grad_checkpointing)

    def _prune_taps(self, max_index: int) -> None:
        self.features = self.features[: self.stage_ends[max_index] + 1]

    def _prune_head(self, max_index: int, prune_head: bool) -> None:
        if max_index < len(self.stage_ends) - 1:
            # The head was sized for the last stage; it now sees the last kept stage's width.
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = ClassifierHead(
                self.num_features, 0, pool_type="", drop_rate=self.drop_rate, **_device_dtype(self)
            )
            self.head.train(self.training)
            self.num_classes = 0
            self.last_norm = _norm_kind(self.features[-1])
            self.num_pools = max_index
        elif prune_head:
            self.reset_classifier(0, "")


# --- registry -----------------------------------------------------------------------------------

def _arch_args(depths: str, widths: str, basis: str, **overrides: Any) -> Dict[str, Any]:
    return dict(depths=VGG_DEPTHS[depths], widths=VGG_WIDTHS[widths], basis=basis,
                **{**BASIS_DEFAULTS[basis], **overrides})


# Model name -> KanVgg arguments: the one table the entry points and cfgs are generated from.
MODEL_ARGS: Dict[str, Dict[str, Any]] = {}
for _basis in BASES:
    for _depth in ("vgg11", "vgg13", "vgg16", "vgg19"):
        MODEL_ARGS[model_name(_depth, _basis)] = _arch_args(_depth, "v4", _basis)
    # BatchNorm and no dropout: the tiny net is for tests and quick demos, and trains fastest so
    # (on 32 px digits it reached 86 % in 4 epochs where affine InstanceNorm stalled near 40 %).
    MODEL_ARGS[model_name("test_vgg", _basis)] = _arch_args(
        "test_vgg", "test", _basis, drop_rate=0.0, norm_layer="batch", kan_dropout=0.0
    )
MODEL_ARGS[model_name("vgg11_slim", "gram")] = _arch_args("vgg11", "v2", "gram")
MODEL_ARGS[model_name("vgg11_bottleneck", "gram")] = _arch_args(
    "vgg11", "v4", "gram", bottleneck=True, norm_layer="batch", kan_dropout=0.0, noise_injection=0.05,
    dim_reduction=8.0,
)


def _pretrained_cfg(tag_name: str) -> Dict[str, Any]:
    w = PRETRAINED_WEIGHTS[tag_name]
    repo = w["hf_hub_id"]
    return kan_cfg(
        hf_hub_id=repo,
        # Naming the file makes timm read it with safetensors only (no pickle fallback).
        hf_hub_filename="model.safetensors",
        first_conv="features.0",
        classifier="head.fc",
        origin_url="https://github.com/IvanDrokin/torch-conv-kan",
        paper_name="Kolmogorov-Arnold Convolutions: Design Principles and Empirical Studies",
        description=(
            f"ImageNet-1k weights of torch-conv-kan's {repo.split('/')[1]} (MIT licence, Ivan Drokin), "
            f"converted on load to kan_zoo's layout"
        ),
        # "key: value" notes are what kan_zoo.hub.pretrained_model_card reads (see its CARD_NOTE_KEYS);
        # notes, unlike extra keys, survive PretrainedCfg(**cfg) and a config.json round trip.
        notes=(
            "dataset: ImageNet-1k",
            f"top1: {w['top1']:.2f}",
            f"top5: {w['top5']:.2f}",
            "metrics: ImageNet-1k validation set, 224 px (resize 256, centre crop 224), reported by the authors",
            f"params: {w['params']:,}",
            f"recipe: {REFERENCE_RECIPE}",
            f"source: https://huggingface.co/{repo}",
            "licence: MIT (torch-conv-kan, Copyright (c) 2024 Ivan Drokin)",
        ),
    )


def _untrained_cfg(name: str) -> Dict[str, Any]:
    if name.startswith("kan_test_vgg"):
        # Two pools: 32 px inputs end at 8 x 8.
        return kan_cfg(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                       first_conv="features.0", classifier="head.fc")
    return kan_cfg(first_conv="features.0", classifier="head.fc")


default_cfgs = generate_default_cfgs({
    **{tag: _pretrained_cfg(tag) for tag in PRETRAINED_WEIGHTS},
    # Architectures without weights get one untagged cfg, so timm lists no pretrained tag for them.
    **{name: _untrained_cfg(name) for name in MODEL_ARGS if not any(t.split(".")[0] == name for t in PRETRAINED_WEIGHTS)},
})


def _filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    from ..convert.vgg import convert_vgg_state_dict

    return convert_vgg_state_dict(state_dict, model, source=_describe_source(model))


def _describe_source(model: nn.Module) -> str:
    """Where the weights being loaded come from, for error messages."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("file"):
        return str(cfg["file"])
    if cfg.get("hf_hub_id"):
        return f"Hugging Face repo {cfg['hf_hub_id']!r}, file {cfg.get('hf_hub_filename') or 'model.safetensors'!r}"
    if cfg.get("url"):
        return str(cfg["url"])
    return "the given state dict"


def _create_kan_vgg(variant: str, pretrained: bool = False, **kwargs: Any) -> KanVgg:
    model_args = dict(MODEL_ARGS[variant], **kwargs)
    out_indices = model_args.pop("out_indices", tuple(range(len(model_args["depths"]))))
    build = functools.partial(
        build_model_with_cfg,
        KanVgg,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        pretrained_filter_fn=_filter_fn,
        **model_args,
    )
    if not pretrained:
        return build()
    with _explain_pretrained_errors(variant, kwargs):
        return build()


@contextlib.contextmanager
def _explain_pretrained_errors(variant: str, kwargs: Dict[str, Any]) -> Iterator[None]:
    """Re-raises the download/read failures whose own messages name neither repo nor file."""
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError
    from safetensors import SafetensorError
    from timm.models._builder import resolve_pretrained_cfg

    try:
        yield
    except (LocalEntryNotFoundError, SafetensorError) as e:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
        )
        repo, filename = cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"
        if repo is None:
            raise
        if isinstance(e, LocalEntryNotFoundError):
            raise HubFileNotCachedError(
                repo, filename, kwargs.get("cache_dir") or hf_constants.HF_HUB_CACHE,
                offline=hf_constants.is_offline_mode(),
            ) from e
        cached = try_to_load_from_cache(repo, filename, cache_dir=kwargs.get("cache_dir"))
        path = cached if isinstance(cached, str) else f"{repo}/{filename}"
        raise CorruptCheckpointError(path, f"{e}; file {filename!r} of Hugging Face repo {repo!r}") from e


register_entry_points(__name__, MODEL_ARGS, _create_kan_vgg)
