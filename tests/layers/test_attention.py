"""Self-attention and focal modulation with KAN projections (kan_zoo.layers.attention)."""
import math

import pytest
import torch

from kan_zoo.convert import convert_block_state_dict, convert_layer_state_dict
from kan_zoo.layers import (KANConv2d, KANFocalModulation1d, KANFocalModulation2d, KANFocalModulation3d,
                            KANSelfAttention1d, KANSelfAttention2d, KANSelfAttention3d, RotaryEmbedding)
from reference_fixtures import load_extras_case, relative_error

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION = {1: KANSelfAttention1d, 2: KANSelfAttention2d, 3: KANSelfAttention3d}
FOCAL = {1: KANFocalModulation1d, 2: KANFocalModulation2d, 3: KANFocalModulation3d}
SIZES = {1: (7,), 2: (4, 5), 3: (3, 2, 4)}


def _input(ndim, channels=4, n=2, seed=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, channels) + SIZES[ndim], generator=g, dtype=dtype)


def _randomise(module, seed=5):
    """Move every parameter off its init (gamma starts at 0, Gram's beta near 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("options", [
    {}, {"num_heads": 2}, {"inner_channels": 6}, {"bottleneck": True}, {"rope": True}, {"rope": True, "num_heads": 2},
    {"basis": "bspline", "kernel_size": 1}, {"residual_gate": "attention"},
])
def test_attention_shapes(ndim, options):
    channels = 12 * options.get("num_heads", 1) if options.get("rope") else 4  # rope: pairs per axis
    layer = ATTENTION[ndim](channels, **options).double().eval()
    x = _input(ndim, channels)
    assert layer(x).shape == x.shape
    layer.train()(x).sum().backward()
    assert layer.gamma.grad is not None


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("options", [{}, {"kan_projections": False}, {"bottleneck": True}, {"basis": "chebyshev"},
                                     {"post_norm": False, "normalize_modulator": False, "focal_level": 1}])
def test_focal_modulation_shapes(ndim, options):
    layer = FOCAL[ndim](4, **options).double().eval()
    x = _input(ndim)
    assert layer(x).shape == x.shape


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("options", [{}, {"num_heads": 2}, {"inner_channels": 2}])
def test_attention_without_position_embedding_commutes_with_permuting_positions(ndim, options):
    """With 1x1 projections every step is per position or symmetric in the positions (batch norm's
    statistics included), so shuffling the positions of x shuffles those of the output."""
    layer = _randomise(ATTENTION[ndim](4, kernel_size=1, **options).double()).train()
    x = _input(ndim, n=3)
    perm = torch.randperm(math.prod(SIZES[ndim]), generator=torch.Generator().manual_seed(0))

    def shuffle(t):
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    torch.testing.assert_close(layer(shuffle(x)), shuffle(layer(x)), rtol=1e-12, atol=1e-12)


def test_rope_breaks_the_permutation_symmetry():
    layer = _randomise(KANSelfAttention2d(4, kernel_size=1, rope=True).double()).eval()
    x = _input(2)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    shuffled = layer(x.flatten(2)[:, :, perm].reshape(x.shape))
    assert (shuffled - layer(x).flatten(2)[:, :, perm].reshape(x.shape)).abs().max() > 1e-3


def test_rope_rotates_each_channel_pair_by_its_hand_computed_angle():
    """2D axial, head_dim 8: pairs 0-1 turn with the row index, pairs 2-3 with the column index, at
    theta^0 and theta^(-1/2)."""
    theta = 100.0
    rope = RotaryEmbedding(8, ndim=2, num_heads=1, theta=theta).double()
    spatial = (3, 4)
    t = torch.randn(1, 1, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = rope(t, spatial)
    for pos in range(12):
        row, col = divmod(pos, 4)
        for pair, angle in enumerate([row, row * theta ** -0.5, col, col * theta ** -0.5]):
            a, b = t[0, 0, pos, 2 * pair].item(), t[0, 0, pos, 2 * pair + 1].item()
            expected = (a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle))
            got = out[0, 0, pos, 2 * pair : 2 * pair + 2].tolist()
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (pos, pair)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_rope_scores_depend_only_on_the_offset(ndim):
    """<R(p) q, R(p') k> = <R(p + s) q, R(p' + s) k>: the same q, k placed at shifted positions."""
    rope = RotaryEmbedding(12, ndim=ndim, num_heads=2).double()
    spatial = (5,) * ndim
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 12, dtype=torch.float64, generator=g) for _ in range(2))
    grid = torch.arange(5 ** ndim).reshape(spatial)

    def score(p, p2):
        t = torch.zeros(1, 2, 5 ** ndim, 12, dtype=torch.float64)
        u = torch.zeros_like(t)
        t[0, :, grid[p]], u[0, :, grid[p2]] = q, k
        return (rope(t, spatial)[0, :, grid[p]] * rope(u, spatial)[0, :, grid[p2]]).sum(-1)

    p, p2 = (0,) * ndim, (1,) * ndim
    shifted = tuple(i + 2 for i in p), tuple(i + 2 for i in p2)
    torch.testing.assert_close(score(p, p2), score(*shifted), rtol=1e-12, atol=1e-12)


def test_learnable_rope_frequencies_get_gradients():
    layer = _randomise(KANSelfAttention2d(4, rope=True, rope_learnable=True).double())
    layer(_input(2)).square().sum().backward()
    assert layer.rope.freqs.grad.abs().sum() > 0
    assert "rope.freqs" in layer.state_dict()
    assert "rope.freqs" not in KANSelfAttention2d(4, rope=True).state_dict()  # fixed: recomputed from theta


@pytest.mark.parametrize("build", [
    lambda: KANSelfAttention2d(4, num_heads=2, inner_channels=8, rope=True, rope_learnable=True, norm_layer="instance"),
    lambda: KANSelfAttention1d(4, bottleneck=True, residual_gate="attention", norm_layer="instance_affine"),
    lambda: KANFocalModulation2d(2, focal_level=2, norm_layer="instance_affine"),
])
def test_gradcheck_float64(build):
    torch.manual_seed(0)
    layer = _randomise(build().double()).train()
    ndim = layer.ndim
    x = _input(ndim, channels=layer.channels, n=1, seed=4).requires_grad_()
    params = [p for p in layer.parameters()]
    names = [n for n, _ in layer.named_parameters()]

    def run(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_focal_layers_are_depth_wise():
    layer = _randomise(KANFocalModulation2d(4)).double().eval()
    z = _input(2)
    for focal in layer.focal_layers:
        base = focal(z)
        bumped = z.clone()
        bumped[:, 1] += 0.5
        changed = (focal(bumped) - base).abs().amax(dim=(0, 2, 3))
        assert changed[1] > 0 and torch.all(changed[[0, 2, 3]] == 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"kernel_size": 2}, "odd"), ({"num_heads": 3}, "num_heads"), ({"residual_gate": "both"}, "residual_gate"),
    ({"rope": True, "num_heads": 4}, "divisible by 4"), ({"rope": True, "rope_theta": 1.0}, "theta"),
])
def test_bad_attention_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KANSelfAttention2d(4, **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"focal_factor": 1}, "odd"), ({"focal_level": 0}, "focal_level"),
                                           ({"groups": 2}, "groups")])
def test_bad_focal_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KANFocalModulation2d(4, **kwargs)


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="4-D input"):
        KANSelfAttention2d(4)(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="input channels"):
        KANFocalModulation1d(4)(torch.randn(2, 3, 5))


# -- the research code (torch-conv-kan SelfKAGNtention2D, KAGNFocalModulation2D)
@pytest.mark.fixtures
@pytest.mark.parametrize("case", ["self_kagn_attention2d", "self_kagn_attention2d_inner4"])
def test_attention_matches_reference(case):
    """The reference scales no dot product (scale=1.0 here). Tolerances: the fixture README's."""
    meta, tensors, state = load_extras_case(case)
    kw = meta["kwargs"]
    assert meta["reference_class"].endswith("SelfKAGNtention2D") and kw["padding"] == kw["kernel_size"] // 2
    layer = KANSelfAttention2d(kw["input_dim"], kw["kernel_size"], inner_channels=kw["inner_projection"],
                               degree=kw["degree"], scale=1.0)
    layer.load_state_dict(convert_block_state_dict(state, layer), strict=True)
    with torch.no_grad():
        assert relative_error(layer.eval()(tensors["input"]), tensors["output_eval"]) < 1e-5
        out64 = layer.double()(tensors["input"].double())
    assert relative_error(out64, tensors["output_eval_float64"]) < 1e-9


def _reference_focal_layer(state, channels, kernel, degree):
    """The reference's depth-wise KAGNConv2DLayerV2 (groups = C) written as a dense KAN conv.

    Its basis is degree-major (channel d * C + j holds degree d of input j) and its grouped conv gives
    output g the D + 1 consecutive channels g (D + 1) .. g (D + 1) + D: degree (g (D + 1) + i) // C of
    input (g (D + 1) + i) % C, not the D + 1 degrees of input g. Only a dense weight can hold that.
    """
    layer = KANConv2d(channels, channels, kernel, padding=kernel // 2, degree=degree, norm_layer="batch")
    weight = torch.zeros(channels, degree + 2, channels, kernel, kernel)
    for g in range(channels):
        weight[g, 0, g] = state["base_conv.weight"][g, 0]
        for i in range(degree + 1):
            d, j = divmod(g * (degree + 1) + i, channels)
            weight[g, 1 + d, j] = state["poly_conv.weight"][g, i]
    norm = {f"norm.{k[len('layer_norm.'):]}": v for k, v in state.items() if k.startswith("layer_norm.")}
    layer.load_state_dict({"weight": weight.flatten(1, 2), "basis.beta_weights": state["beta_weights"], **norm})
    return layer


def _focal_from_reference(reference_wiring):
    meta, tensors, state = load_extras_case("kagn_focal_modulation2d")
    kw = meta["kwargs"]
    c, degree = kw["input_dim"], kw["degree"]
    layer = KANFocalModulation2d(c, kw["focal_window"], kw["focal_level"], kw["focal_factor"], degree=degree)

    def part(prefix):
        return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}

    converted = {f"norm.{k}": v for k, v in part("norm_layer").items()}
    for ref, ours in layer.reference_renames.items():
        if ref != "norm_layer":
            converted.update({f"{ours}.{k}": v for k, v in
                              convert_layer_state_dict(part(ref), target=getattr(layer, ours)).items()})
    for level, kernel in enumerate(layer.kernel_sizes):
        ref = part(f"focal_layers.{level}")
        if reference_wiring:
            layer.focal_layers[level] = _reference_focal_layer(ref, c, kernel, degree)
        else:  # the same numbers read as if the reference were depth-wise: input g's degrees for output g
            poly = ref["poly_conv.weight"].unsqueeze(2)  # (C, D + 1, 1, k, k)
            weight = torch.cat([ref["base_conv.weight"].unsqueeze(1), poly], 1).flatten(1, 2)
            ref = {"weight": weight, "basis.beta_weights": ref["beta_weights"],
                   **{f"norm.{k[len('layer_norm.'):]}": v for k, v in ref.items() if k.startswith("layer_norm.")}}
            layer.focal_layers[level].load_state_dict(ref)
        converted.update({f"focal_layers.{level}.{k}": v for k, v in layer.focal_layers[level].state_dict().items()})
    layer.load_state_dict(converted, strict=True)
    return layer.eval(), tensors


@pytest.mark.fixtures
def test_focal_modulation_matches_reference_with_its_focal_layer_wiring():
    """Everything but the depth-wise layers is kan_zoo's block as it is; those carry the reference's
    channel wiring (a dense KAN conv) to show that the rest is the reference's math."""
    layer, tensors = _focal_from_reference(reference_wiring=True)
    with torch.no_grad():
        assert relative_error(layer(tensors["input"]), tensors["output_eval"]) < 1e-5
        out64 = layer.double()(tensors["input"].double())
    assert relative_error(out64, tensors["output_eval_float64"]) < 1e-9


@pytest.mark.fixtures
def test_true_depth_wise_focal_layers_differ_from_the_reference():
    """The deviation is not rounding: read depth-wise, the reference's weights give another context
    (and an output 100x the fixture tolerance away)."""
    wired, tensors = _focal_from_reference(reference_wiring=True)
    depth_wise, _ = _focal_from_reference(reference_wiring=False)
    x = tensors["input"]
    with torch.no_grad():
        assert relative_error(depth_wise.context(x)[1], wired.context(x)[1]) > 0.1
        assert relative_error(depth_wise(x), tensors["output_eval"]) > 1e-3


def test_converter_refuses_the_reference_focal_layers():
    _, _, state = load_extras_case("kagn_focal_modulation2d")
    layer = KANFocalModulation2d(8, degree=3)
    with pytest.raises(ValueError, match="KAGNConvNDLayerV2"):
        convert_block_state_dict(state, layer)
