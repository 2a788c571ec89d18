"""Adaptive grid refinement: outputs preserved on the fitting data, coverage of inputs outside the
old grid, growth replacing parameters consistently, distributed statistics, the training option."""
import copy

import pytest
import timm
import torch

import kan_zoo  # noqa: F401
from kan_zoo.grid import (GridUpdater, basis_input_samples, grid_coverage, grid_layers, update_grid,
                          update_grids)
from kan_zoo.layers import BottleneckKANConv2d, KANActivation, KANConv2d, KANLinear

GRID_BASES = ["bspline", "rbf", "relu"]
# Stated tolerance: refitting onto a grid 4x finer keeps the layer's output on the fitting data
# within 2% (RMS, relative to the output's RMS); a same-size refit changes the basis and is looser.
FINE_TOL = 0.02


def _layer(kind, basis):
    if kind == "conv":
        return KANConv2d(4, 6, 3, padding=1, groups=2, basis=basis, norm_layer=None).eval()
    if kind == "linear":
        return KANLinear(4, 5, basis=basis).eval()
    return KANActivation(4, basis).eval()


def _input(kind, scale=0.5):
    x = torch.randn(16, 4) if kind == "linear" else torch.randn(8, 4, 6, 6)
    return x * scale + 0.2


def _rms_rel(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


@pytest.mark.parametrize("kind", ["conv", "activation", "linear"])
@pytest.mark.parametrize("basis", GRID_BASES)
def test_refit_preserves_outputs_on_fitting_data(basis, kind):
    layer = _layer(kind, basis)
    x = _input(kind)
    with torch.no_grad():
        before = layer(x)
    old_size = layer.basis.grid_size
    assert update_grid(layer, x, grid_size=4 * old_size) is True
    with torch.no_grad():
        after = layer(x)
    assert _rms_rel(after, before) < FINE_TOL
    assert layer.basis.grid_size == 4 * old_size
    # Weight and basis were replaced together: function count, weight shape and basis agree.
    assert layer.num_functions == int(layer.base_folded) + layer.basis.num_functions
    assert layer.coefficients().shape[1] == layer.num_functions


@pytest.mark.parametrize("basis", GRID_BASES)
def test_refit_improves_coverage_of_inputs_outside_the_old_grid(basis):
    layer = _layer("conv", basis)
    wide = _input("conv", scale=4.0)
    samples = basis_input_samples(layer, wide)
    before = grid_coverage(layer, samples)
    update_grid(layer, wide)
    after = grid_coverage(layer, samples)
    assert before < 0.9 and after > before and after > 0.99


@pytest.mark.parametrize("basis", GRID_BASES)
def test_same_size_refit_is_in_place(basis):
    layer = _layer("conv", basis)
    params = {n: p for n, p in layer.named_parameters()}
    shapes = {n: p.shape for n, p in params.items()}
    x = _input("conv", scale=2.0)
    with torch.no_grad():
        before = layer(x)
    assert update_grid(layer, x) is False
    assert all(p is params[n] and p.shape == shapes[n] for n, p in layer.named_parameters())
    with torch.no_grad():
        after = layer(x)
    assert _rms_rel(after, before) < 0.3  # same size, different basis: close, not exact


def test_bspline_knots_follow_the_data_and_stay_increasing():
    layer = _layer("activation", "bspline")
    x = torch.randn(64, 4, 8).exp()  # skewed, in (0, inf)
    update_grid(layer, x, grid_size=8)
    knots = layer.basis.grid
    assert knots.shape == (8 + 2 * 3 + 1,)
    assert (knots[1:] > knots[:-1]).all()
    inner = knots[3:-3]
    assert inner[0] < x.min() and inner[-1] > x.max()
    # Adaptive knots crowd where the data are dense (near the low end of a log-normal).
    assert (inner[1] - inner[0]) < (inner[-1] - inner[-2])


def test_distributed_statistics_give_identical_replicas():
    torch.manual_seed(0)
    a = _layer("conv", "relu")
    b = copy.deepcopy(a)
    xa, xb = _input("conv", 1.0), _input("conv", 3.0)
    sa, sb = basis_input_samples(a, xa), basis_input_samples(b, xb)
    gather = lambda t: torch.cat([sa, sb])  # noqa: E731  what accelerator.gather returns on every process
    update_grid(a, samples=sa, all_gather=gather, grid_size=7)
    update_grid(b, samples=sb, all_gather=gather, grid_size=7)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
    alone = copy.deepcopy(a)
    update_grid(alone, samples=sa, grid_size=7)
    assert not torch.equal(alone.basis.phase_low, a.basis.phase_low)  # the other process's data mattered


def test_errors():
    with pytest.raises(ValueError, match="no grid"):
        update_grid(KANConv2d(2, 2, 3, basis="gram"), torch.randn(1, 2, 4, 4))
    with pytest.raises(TypeError, match="projection"):
        update_grid(BottleneckKANConv2d(16, 16, 3, basis="bspline"), torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        update_grid(_layer("activation", "rbf"), torch.randn(2, 3, 4))


def test_update_grids_on_a_model_and_the_training_option():
    model = timm.create_model("kan_test_ckan_bspline", num_classes=3)
    x = torch.randn(4, 3, 32, 32)
    layers = grid_layers(model)
    assert len(layers) == 7  # six blocks and the head
    model.eval()
    with torch.no_grad():
        before = model(x)
    replaced = update_grids(model, x, grid_size=20)
    assert set(replaced) == {n for n, _ in layers} and all(replaced.values())
    with torch.no_grad():
        after = model(x)
    assert _rms_rel(after, before) < 0.05  # seven refits in a row, with BatchNorm in between

    updater = GridUpdater(every=2, grow=5, max_grid_size=22)
    model.train()
    assert updater.maybe_update(model, 1, x) is False
    assert updater.maybe_update(model, 2, x) is True  # 20 -> 22 (capped): parameters replaced
    assert {m.basis.grid_size for _, m in layers} == {22}
    assert updater.maybe_update(model, 4, x) is False  # at the cap: refit in place
    model(x).sum().backward()  # still trains
    assert all(m.weight.grad is not None for _, m in layers)


@pytest.mark.parametrize("basis", GRID_BASES)
def test_refitted_grid_reaches_every_code_path(basis):
    # Non-uniform knots, moved centres and per-channel phases must be read by the fused
    # expand+conv node (used under autograd) just as by the plain path (no grad).
    layer = _layer("conv", basis)
    x = torch.randn(8, 4, 6, 6).exp()
    update_grid(layer, x, grid_size=9)
    with torch.no_grad():
        plain = layer(x)
    fused = layer(x.requires_grad_())
    torch.testing.assert_close(fused.detach(), plain, rtol=1e-4, atol=1e-5)
    fused.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# -- refitted / grown state survives state_dict round trips and export + timm reload ------------------

@pytest.mark.parametrize("kind", ["conv", "activation"])
@pytest.mark.parametrize("grow", [False, True], ids=["refit", "grow"])
@pytest.mark.parametrize("basis", GRID_BASES)
def test_refitted_layer_round_trips_through_state_dict(basis, grow, kind):
    layer = _layer(kind, basis)
    x = _input(kind, scale=3.0)
    update_grid(layer, x, grid_size=layer.basis.grid_size + 3 if grow else None)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    fresh = _layer(kind, basis)  # the architecture's default grid, as timm builds it before loading
    fresh.load_state_dict(state, strict=True)  # a grown checkpoint resizes the layer first
    assert fresh.basis.grid_size == layer.basis.grid_size and fresh.num_functions == layer.num_functions
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("basis", ["rbf", "relu"])
def test_same_size_refit_updates_the_width_buffers_in_place(basis):
    layer = _layer("conv", basis)
    name = "inv_width" if basis == "rbf" else "scale"
    buffer = getattr(layer.basis, name)
    initial = float(buffer)
    update_grid(layer, _input("conv", scale=3.0))
    # same tensor (an EMA / DDP holding it stays in sync), new value, and part of the state_dict
    assert getattr(layer.basis, name) is buffer and float(buffer) != pytest.approx(initial)
    assert f"basis.{name}" in layer.state_dict()


@pytest.mark.parametrize("basis", ["rbf", "relu"])
def test_checkpoint_without_width_buffer_keeps_the_constructor_value(basis):
    # state dicts written before inv_width / scale were buffers still load strictly
    layer = _layer("conv", basis)
    name = "basis.inv_width" if basis == "rbf" else "basis.scale"
    state = {k: v for k, v in layer.state_dict().items() if k != name}
    fresh = _layer("conv", basis)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.state_dict()[name], layer.state_dict()[name])
    with pytest.raises(RuntimeError, match="Missing key"):  # a checkpoint without the basis still fails
        fresh.load_state_dict({"weight": layer.weight.detach()}, strict=True)


@pytest.mark.parametrize("basis", GRID_BASES)
def test_grown_checkpoint_does_not_hide_real_mismatches(basis):
    layer = KANConv2d(4, 6, 3, basis=basis, norm_layer=None)
    update_grid(layer, _input("conv"), grid_size=layer.basis.grid_size + 2)
    state = layer.state_dict()
    for other in (KANConv2d(4, 8, 3, basis=basis, norm_layer=None),  # other output channels
                  KANConv2d(4, 6, 5, basis=basis, norm_layer=None)):  # other kernel
        size, weight = other.basis.grid_size, other.weight
        with pytest.raises(RuntimeError, match="size mismatch"):
            other.load_state_dict(state, strict=True)
        assert other.basis.grid_size == size and other.weight is weight  # left as it was


@pytest.mark.parametrize("grow", [False, True], ids=["refit", "grow"])
@pytest.mark.parametrize("name", ["kan_test_vgg_rbf", "kan_test_vgg_relu"])
def test_refitted_model_reloads_through_timm_local_dir(name, grow, tmp_path):
    from kan_zoo.hub import export_to_folder

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3)
    x = torch.randn(2, 3, 32, 32) * 2.0
    update_grids(model, x, grow=2 if grow else 0)
    if grow:  # grow one layer more, so sizes differ per layer as well as from the default
        layer = grid_layers(model)[0][1]
        update_grid(layer, samples=torch.randn(64, layer.basis.channels), grid_size=layer.basis.grid_size + 1)
    model.eval()
    folder = export_to_folder(model, tmp_path / "export")
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    sizes = [m.basis.grid_size for _, m in grid_layers(model)]
    assert [m.basis.grid_size for _, m in grid_layers(reloaded)] == sizes
    if grow:
        assert len(set(sizes)) > 1
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=1e-6, atol=1e-6)
