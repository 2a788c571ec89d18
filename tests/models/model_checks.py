"""Checks the model-family tests share: timm's classifier contract on a tiny model, gradients,
a few training steps, and encoder weights served from a local Hugging Face cache (the
``one_thread`` fixture is in tests/conftest.py).

Each family's test module keeps its own test functions (named for what they test) and calls these
with its model names and input size, so a failure still points at the family.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import pytest
import timm
import torch
import torch.fx
from timm.layers import create_feature_extractor
from timm.models import FeatureGraphNet, get_notrace_functions, get_notrace_modules, group_parameters
from timm.models._features_fx import GraphExtractNet
from torch import nn

from hub_helpers import build_local_hf_cache, use_local_hf_cache

__all__ = [
    "create", "images", "assert_grads_finite", "train_losses", "save_weights", "serve_tag_weights",
    "assert_encoder_weights", "check_registry_without_weights", "check_full_model_cfg", "check_forward_backward",
    "check_grad_checkpointing", "check_classifier_reset", "check_fits_a_fixed_batch", "check_rejects_bad_inputs",
    "CONTRACT_CHECKS", "fx_trace", "check_segmentation_fx",
]


def create(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with 5 classes unless told otherwise (a small head for tiny models)."""
    return timm.create_model(name, num_classes=kwargs.pop("num_classes", 5), **kwargs)


def images(n: int = 2, chans: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, chans, size, size)


def assert_grads_finite(model: nn.Module) -> None:
    """Every parameter got a gradient in the last backward, and a finite one."""
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


def train_losses(model: nn.Module, loss_fn: Callable[[], torch.Tensor], steps: int, lr: float = 1e-2) -> List[float]:
    """``steps`` Adam steps on ``loss_fn()`` (a loss of ``model``); returns the losses, all finite."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    return losses


def save_weights(model: nn.Module, path) -> str:
    """Saves ``model``'s state dict as a safetensors file; returns the path, for ``pretrained_cfg_overlay``."""
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def serve_tag_weights(tag: str, monkeypatch: pytest.MonkeyPatch, cache_dir) -> Dict[str, torch.Tensor]:
    """Serves perturbed (kan_zoo-layout) weights of ``tag`` from a local offline Hugging Face cache.

    Returns the state dict served: weights a freshly initialised model cannot have by chance.
    """
    import safetensors.torch

    source = timm.create_model(tag.split(".")[0])
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.rand_like(p))
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    cache = use_local_hf_cache(monkeypatch, cache_dir)
    build_local_hf_cache(cache, timm.models.get_pretrained_cfg(tag).hf_hub_id,
                         {"model.safetensors": safetensors.torch.save(state)})
    return state


def assert_encoder_weights(encoder_state: Dict[str, torch.Tensor], source_state: Dict[str, torch.Tensor]) -> None:
    """A features_only encoder holds the source model's weights (it flattens features.N to features_N)."""
    assert len(encoder_state) > 0
    for key, value in encoder_state.items():
        assert torch.equal(value, source_state[key.replace("features_", "features.", 1)]), key


# --- timm's classifier contract on a tiny model (ResNet, DenseNet) ------------------------------

def check_registry_without_weights(pattern: str, names: Sequence[str], tiny: str) -> None:
    assert set(names) == set(timm.list_models(pattern))
    assert timm.list_pretrained(pattern) == []
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model(tiny, pretrained=True)


def check_full_model_cfg(
    model: nn.Module, first_conv_type: type, reductions: Sequence[int] = (2, 4, 8, 16, 32)
) -> None:
    """A full-size model's feature pyramid (``reductions``), head and preprocessing cfg (no weights)."""
    assert [f["reduction"] for f in model.feature_info] == list(reductions)
    assert model.num_features == model.head_hidden_size == model.feature_info[-1]["num_chs"]
    assert model.get_classifier().out_features == 1000
    cfg = model.pretrained_cfg
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "pool_size", "license", "paper_ids"):
        assert cfg.get(key) is not None, key
    assert not cfg.get("hf_hub_id") and not cfg.get("url")
    assert isinstance(model.get_submodule(cfg["first_conv"]), first_conv_type)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert tuple(cfg["pool_size"]) == (cfg["input_size"][1] // 32, cfg["input_size"][2] // 32)


def check_forward_backward(name: str, size: int) -> nn.Module:
    """A small tiny model's forward is finite and backward runs; returns the model, with its gradients."""
    model = create(name)
    assert sum(p.numel() for p in model.parameters()) < 200_000
    out = model(images(size=size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    return model


def check_fits_a_fixed_batch(name: str, size: int, lr: float = 1e-2) -> None:
    # The blocks train as wired (no extra activations, zero-init-last): Adam overfits 8 images quickly.
    model = create(name, num_classes=4)
    x, y = images(8, size=size), torch.arange(8) % 4
    losses = train_losses(model, lambda: nn.functional.cross_entropy(model(x), y), steps=15, lr=lr)
    assert losses[-1] < 0.5 * losses[0]


def check_features_only(name: str, size: int) -> None:
    x = images(size=size)
    # The classifier's own taps (each family's tests pin them down); the wrappers must report the same.
    reductions = [f["reduction"] for f in create(name).feature_info]
    outs = {}
    for cls in ("list", "getter"):
        torch.manual_seed(0)  # same weights for both wrappers
        model = create(name, features_only=True, feature_cls=cls).eval()
        assert model.feature_info.reduction() == reductions
        feats = model(x)
        assert [f.shape[1] for f in feats] == model.feature_info.channels()
        assert [f.shape[-1] for f in feats] == [size // r for r in model.feature_info.reduction()]
        outs[cls] = feats
    for a, b in zip(outs["list"], outs["getter"]):
        torch.testing.assert_close(a, b)
    model = create(name, features_only=True, out_indices=(1, 3))
    assert model.feature_info.reduction() == [reductions[1], reductions[3]]


def check_forward_intermediates_and_prune(name: str, size: int) -> None:
    model = create(name).eval()
    x = images(size=size)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [t.shape[1] for t in inter] == [f["num_chs"] for f in model.feature_info]
    torch.testing.assert_close(inter[-1], final)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and torch.equal(last_two[0], inter[-2])
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], inter[1])

    kept = model.prune_intermediate_layers(indices=[0, 2])
    assert kept == [0, 2]
    assert model.num_features == model.feature_info[2]["num_chs"]
    assert isinstance(model.get_classifier(), nn.Identity)
    torch.testing.assert_close(model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)[1], inter[2])
    torch.testing.assert_close(model(x), inter[2])  # forward ends at the last kept tap, headless


def check_grad_checkpointing(name: str, size: int) -> nn.Module:
    """Same outputs and gradients with and without checkpointing; returns the checkpointing model."""
    model = create(name)
    x = images(size=size)
    out = model(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(model.forward_intermediates(x)[0], model.forward_features(x))
    return model


def check_classifier_reset(
    name: str, size: int, unpooled_head: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda model, x: x
) -> None:
    """``unpooled_head(model, features)``: what a headless, pool-less model returns (the features
    themselves, or e.g. RDNet's through its head LayerNorm, which timm keeps)."""
    model = create(name).eval()
    x = images(size=size)
    feats = model.forward_features(x)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(0, "")
    torch.testing.assert_close(model(x), unpooled_head(model, feats))  # no pool, no classifier
    headless = create(name, num_classes=0).eval()
    assert headless(x).shape == (2, headless.num_features) and isinstance(headless.get_classifier(), nn.Identity)


def check_group_matcher(name: str, size: int) -> None:
    """The groups cover every parameter, and the first group is the stem conv (cfg ``first_conv``)."""
    model = create(name)
    stem = model.pretrained_cfg["first_conv"] + "."
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        names = [n for g in groups.values() for n in g]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        assert groups[0] == [n for n, _ in model.named_parameters() if n.startswith(stem)]


def check_in_chans_dtype_device(name: str, size: int) -> None:
    model = create(name, in_chans=1)
    assert model(images(chans=1, size=size)).shape == (2, 5)
    model = create(name, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(images(size=size).double()).dtype == torch.float64
    assert all(p.is_meta for p in create(name, device="meta").parameters())
    with pytest.raises(TypeError):
        create(name, not_an_argument=1)


def check_fx_matches_eager(name: str, size: int) -> None:
    model = create(name).eval()
    x = images(size=size)
    graph = FeatureGraphNet(model, out_indices=tuple(range(len(model.feature_info))))
    for a, b in zip(graph(x), model.forward_intermediates(x, intermediates_only=True)):
        torch.testing.assert_close(a, b)
    whole = GraphExtractNet(model, {model.pretrained_cfg["classifier"]: "logits"})
    torch.testing.assert_close(whole(x), model(x))
    with pytest.raises(ValueError, match=f"at least {size}x{size}"):
        whole(images(size=size // 2))  # the size check survives tracing


def check_rejects_bad_inputs(name: str, size: int) -> None:
    """Inputs below the total stride ``size`` (non-square too), of the wrong channels or rank: clear errors."""
    model = create(name).eval()
    with pytest.raises(ValueError, match=rf"at least {size}x{size} .* got {size // 2}x{size + 8}"):
        model(torch.randn(1, 3, size // 2, size + 8))
    with pytest.raises(ValueError, match=rf"at least {size}x{size}"):
        model.forward_intermediates(images(size=size - 1))
    with pytest.raises(ValueError, match="channels"):
        model(images(chans=4, size=size))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, size, size))


def fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    """torch.fx's symbolic trace with timm's leaf modules (the KAN layers) and notrace functions, as
    timm's FX feature extraction traces; in the model's current train/eval mode."""
    leaves = tuple(get_notrace_modules())

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return isinstance(module, leaves) or super().is_leaf_module(module, name)

    tracer = Tracer(autowrap_functions=tuple(get_notrace_functions()), param_shapes_constant=True)
    return torch.fx.GraphModule(model, tracer.trace(model))


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def check_segmentation_fx(model: nn.Module, sizes: Sequence[Sequence[int]], modules: Sequence[str]) -> None:
    """A segmentation net traced by torch.fx computes what it computes eagerly, and timm's FX feature
    extraction returns its modules' outputs.

    Traced once per mode, the graph runs at every (H, W) in ``sizes`` to the eager outputs and, in
    train mode, the eager gradients (the same ops in the same order: equal bit for bit); the input
    check is a graph node that still rejects a wrong channel count. ``modules``: submodule names whose
    outputs ``timm.layers.create_feature_extractor`` must return as forward hooks see them.
    """
    g = torch.Generator().manual_seed(0)
    chans = model.in_chans
    for mode in ("eval", "train"):
        getattr(model, mode)()
        graph = fx_trace(model)
        assert any(n.target.__name__ == "check_segmentation_input" for n in graph.graph.nodes
                   if n.op == "call_function"), "the input check is not a node of the traced graph"
        for size in sizes:
            x = torch.randn(2, chans, *size, generator=g)
            outputs = {}
            for name, module in (("eager", model), ("fx", graph)):
                module.zero_grad()
                out = _as_tuple(module(x))
                sum(o.square().mean() for o in out).backward()
                outputs[name] = [o.detach() for o in out], {n: p.grad.clone() for n, p in module.named_parameters()}
            (eager_out, eager_grads), (fx_out, fx_grads) = outputs["eager"], outputs["fx"]
            assert len(fx_out) == len(eager_out) and fx_grads.keys() == eager_grads.keys()
            for a, b in zip(eager_out, fx_out):
                torch.testing.assert_close(b, a, rtol=0, atol=0)
            for name, grad in eager_grads.items():
                torch.testing.assert_close(fx_grads[name], grad, rtol=0, atol=0, msg=name)
        with pytest.raises(ValueError, match=f"in_chans={chans}"):
            graph(torch.randn(2, chans + 1, *sizes[0]))

    model.eval()
    extractor = create_feature_extractor(model, list(modules))
    seen = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, out)) for name in modules]
    x = torch.randn(1, chans, *sizes[0], generator=g)
    with torch.no_grad():
        model(x)
        features = extractor(x)
    for hook in hooks:
        hook.remove()
    assert list(features) == list(modules)
    for name in modules:
        torch.testing.assert_close(features[name], seen[name], rtol=0, atol=0)


# The checks a family's tiny classifier passes as they are: ``(name, size)`` -> None.
CONTRACT_CHECKS = (
    check_fits_a_fixed_batch, check_features_only, check_forward_intermediates_and_prune, check_classifier_reset,
    check_group_matcher, check_in_chans_dtype_device, check_fx_matches_eager, check_rejects_bad_inputs,
)
