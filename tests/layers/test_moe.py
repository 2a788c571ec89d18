"""Mixture of KAN-conv experts (kan_zoo.layers.moe): routing, combination, gradients, load balancing, fixtures."""
import copy
import math
import statistics

import pytest
import torch

from kan_zoo.convert import convert_block_state_dict
from kan_zoo.layers import MoEKANConv1d, MoEKANConv2d, MoEKANConv3d, moe_aux_loss
from kan_zoo.layers.moe import cv_squared
from reference_fixtures import load_extras_case, relative_error

pytestmark = pytest.mark.usefixtures("one_thread")

MOE = {1: MoEKANConv1d, 2: MoEKANConv2d, 3: MoEKANConv3d}
SIZES = {1: (7,), 2: (5, 5), 3: (3, 4, 3)}


def _moe(ndim=2, num_experts=4, top_k=2, seed=0, **kw):
    """A float64 MoE whose gate weights are random (zero at init would tie every logit)."""
    torch.manual_seed(seed)
    layer = MOE[ndim](3, 4, 3, padding=1, num_experts=num_experts, top_k=top_k, **kw).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        layer.w_gate.copy_(torch.randn(layer.w_gate.shape, generator=g, dtype=torch.float64) * 2)
        if layer.w_noise is not None:
            layer.w_noise.copy_(torch.randn(layer.w_noise.shape, generator=g, dtype=torch.float64))
    return layer


def _input(ndim=2, n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 3) + SIZES[ndim], generator=g, dtype=torch.float64)


def _hand_top_k(layer, x):
    """Per sample: [(expert, weight)] from sorting the clean logits in Python."""
    pooled = x.mean(dim=tuple(range(2, x.ndim)))
    logits = (pooled @ layer.w_gate).tolist()
    choices = []
    for row in logits:
        best = sorted(range(len(row)), key=lambda e: -row[e])[: layer.top_k]
        z = sum(math.exp(row[e]) for e in best)
        choices.append([(e, math.exp(row[e]) / z) for e in best])
    return choices


@pytest.mark.parametrize("ndim, options", [
    (1, {}), (2, {}), (3, {}), (2, {"basis": "bspline"}), (2, {"basis": "wavelet"}),
    (2, {"bottleneck": True, "norm_layer": "batch"}), (2, {"top_k": 1}), (2, {"stride": 2}),
])
def test_eval_output_is_the_hand_computed_top_k_combination(ndim, options):
    options = dict(options)
    top_k = options.pop("top_k", 2)
    layer = _moe(ndim, top_k=top_k, **options).eval()
    x = _input(ndim)
    with torch.no_grad():
        y = layer(x)
        expected = torch.stack([
            sum(w * layer.experts[e](x[b : b + 1])[0] for e, w in choice)
            for b, choice in enumerate(_hand_top_k(layer, x))
        ])
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_each_expert_runs_once_on_exactly_its_samples():
    layer = _moe(num_experts=5, top_k=2).eval()
    x = _input(n=8)
    seen = {}
    for e, expert in enumerate(layer.experts):
        expert.register_forward_hook(lambda m, inp, out, e=e: seen.setdefault(e, []).append(inp[0]))
    with torch.no_grad():
        layer(x)
    chosen = _hand_top_k(layer, x)
    for e in range(5):
        samples = [b for b, choice in enumerate(chosen) if e in dict(choice)]
        assert len(seen[e]) == 1  # one call per expert, whatever the batch
        torch.testing.assert_close(seen[e][0], x[samples], rtol=0, atol=0)
    assert sum(len(s[0]) for s in seen.values()) == 8 * 2


@pytest.mark.parametrize("top_k, renormalize", [(2, True), (1, False), (1, True)])
def test_gradient_reaches_only_the_selected_experts(top_k, renormalize):
    layer = _moe(num_experts=6, top_k=top_k, renormalize=renormalize).eval()
    x = _input(n=2)
    chosen = {e for choice in _hand_top_k(layer, x) for e, _ in choice}
    assert 0 < len(chosen) < 6, "two samples leave some experts unchosen"
    layer(x).square().sum().backward()
    for e, expert in enumerate(layer.experts):
        grads = [p.grad for p in expert.parameters()]
        # an unchosen expert runs on an empty batch: in the graph (for DDP), with zero gradient
        assert all(g is not None for g in grads)
        norm = sum(g.abs().sum().item() for g in grads)
        assert (norm > 0) == (e in chosen), (e, norm)
    gate = layer.w_gate.grad.abs().sum().item()
    # a renormalised top-1 weight is always 1: the task loss then does not reach the gate
    assert (gate > 0) == (top_k > 1 or not renormalize)


def test_unrenormalised_weights_are_the_full_softmax_probabilities():
    layer = _moe(num_experts=5, top_k=2, renormalize=False).eval()
    x = _input()
    with torch.no_grad():
        probs = torch.softmax(x.mean((2, 3)) @ layer.w_gate, dim=1)
        routing = layer.route(x)
        expected = torch.stack([sum(probs[b, e] * layer.experts[e](x[b : b + 1])[0] for e in chosen)
                                for b, chosen in enumerate(routing.experts.tolist())])
        torch.testing.assert_close(routing.weights, probs.gather(1, routing.experts), rtol=0, atol=0)
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_top_k_equal_to_num_experts_is_the_dense_softmax_mixture():
    layer = _moe(num_experts=3, top_k=3).eval()
    x = _input()
    with torch.no_grad():
        gates = torch.softmax(x.mean((2, 3)) @ layer.w_gate, dim=1)
        expected = sum(gates[:, e, None, None, None] * layer.experts[e](x) for e in range(3))
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def _cv2(values):
    return statistics.variance(values) / (statistics.fmean(values) ** 2 + 1e-10)


def test_eval_load_balancing_loss_against_hand_computed_value():
    layer = _moe(num_experts=4, top_k=2).eval()
    x = _input(n=7)
    with torch.no_grad():
        layer(x)
    chosen = _hand_top_k(layer, x)
    importance = [sum(dict(c).get(e, 0.0) for c in chosen) for e in range(4)]
    load = [sum(e in dict(c) for c in chosen) for e in range(4)]
    assert math.isclose(layer.aux_loss.item(), _cv2(importance) + _cv2(load), rel_tol=1e-12)


def test_training_load_is_the_probability_of_staying_in_the_top_k():
    """Shazeer et al.'s smooth load: sum over samples of Phi((clean - threshold) / noise scale), the
    threshold being the (k+1)-th largest noisy logit for an expert inside the top k, else the k-th."""
    layer = _moe(num_experts=5, top_k=2).train()
    x = _input(n=6)
    torch.manual_seed(7)
    with torch.no_grad():
        layer(x)
    torch.manual_seed(7)
    noise = torch.randn(6, 5, dtype=torch.float64).tolist()  # the forward's only draw
    pooled = x.mean((2, 3))
    clean, raw_scale = (pooled @ layer.w_gate).tolist(), (pooled @ layer.w_noise).tolist()
    load, importance = [0.0] * 5, [0.0] * 5
    for b in range(6):
        scale = [math.log1p(math.exp(r)) + 1e-2 for r in raw_scale[b]]
        noisy = [c + n * s for c, n, s in zip(clean[b], noise[b], scale)]
        ranked = sorted(noisy, reverse=True)
        best = sorted(range(5), key=lambda e: -noisy[e])[:2]
        z = sum(math.exp(noisy[e]) for e in best)
        for e in range(5):
            threshold = ranked[2] if noisy[e] > ranked[2] else ranked[1]
            load[e] += 0.5 * math.erfc(-(clean[b][e] - threshold) / scale[e] / math.sqrt(2))
            importance[e] += math.exp(noisy[e]) / z if e in best else 0.0
    assert math.isclose(layer.aux_loss.item(), _cv2(importance) + _cv2(load), rel_tol=1e-10)


def test_noisy_gating_only_in_training_and_seeded():
    layer = _moe(num_experts=6, top_k=2)
    x = _input(n=8)

    def gates(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return layer.route(x).gates

    layer.eval()
    assert torch.equal(gates(1), gates(2))  # deterministic in eval
    clean = gates(1)
    layer.train()
    assert torch.equal(gates(3), gates(3))  # the global seed fixes the noise
    assert not torch.equal(gates(3), gates(4))
    assert not torch.equal(gates(3), clean)
    layer.noisy_gating = False
    assert torch.equal(gates(3), clean)


def test_training_gradients_reach_the_gate_and_noise_weights_through_the_loss():
    layer = _moe(num_experts=4, top_k=2).train()
    x = _input(n=5)

    def run(w_gate, w_noise):
        torch.manual_seed(11)  # the same noise on every call
        y = torch.func.functional_call(layer, {"w_gate": w_gate, "w_noise": w_noise}, (x,))
        return y.square().mean(), layer.aux_loss

    params = (layer.w_gate.detach().clone().requires_grad_(), layer.w_noise.detach().clone().requires_grad_())
    torch.autograd.gradcheck(run, params, eps=1e-6, atol=1e-6)
    _, aux = run(*params)
    grads = torch.autograd.grad(aux, params)
    assert all(g.abs().sum() > 0 for g in grads)  # the smooth load reaches both


def test_moe_aux_loss_sums_the_models_moe_layers():
    first, second = _moe(seed=0), _moe(seed=3)
    model = torch.nn.Sequential(first, torch.nn.Conv2d(4, 3, 1).double(), second)
    assert moe_aux_loss(model) is None  # no forward yet
    assert moe_aux_loss(torch.nn.Conv2d(1, 1, 1)) is None
    model(_input())
    total = moe_aux_loss(model)
    assert total.requires_grad
    torch.testing.assert_close(total, (first.aux_loss + second.aux_loss).float())


def test_deepcopy_after_a_training_forward():
    """An EMA copy is taken from a model whose MoE layers hold their last graph-attached loss."""
    layer = _moe().train()
    layer(_input())
    copied = copy.deepcopy(layer)
    assert copied.aux_loss is None and layer.aux_loss is not None
    torch.testing.assert_close(copied.eval()(_input()), layer.eval()(_input()))


def test_cv_squared():
    assert cv_squared(torch.tensor([3.0])).item() == 0.0
    assert math.isclose(cv_squared(torch.tensor([1.0, 2.0, 4.0])).item(), _cv2([1.0, 2.0, 4.0]), rel_tol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_experts": 2, "top_k": 3}, "top_k"),
    ({"num_experts": 0}, "num_experts"),
    ({"top_k": 0}, "top_k"),
    ({"noise_epsilon": -1.0}, "noise_epsilon"),
    ({"bottleneck": True, "basis": "rbf"}, "bottleneck"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoEKANConv2d(3, 4, 3, **kwargs)


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="input channels"):
        _moe()(torch.randn(2, 5, 4, 4, dtype=torch.float64))


# -- the research code (torch-conv-kan MoEKAGNConv2DLayer)

def _reference_moe(case):
    meta, tensors, state = load_extras_case(case)
    kw = meta["kwargs"]
    assert kw["noisy_gating"] and meta["reference_class"].endswith("MoEKAGNConv2DLayer")
    layer = MoEKANConv2d(kw["input_size"], kw["output_size"], kw["kernel_size"], padding=kw["padding"],
                         num_experts=kw["num_experts"], top_k=kw["k"], degree=kw["degree"])
    layer.load_state_dict(convert_block_state_dict(state, layer), strict=True)
    return layer.eval(), tensors


@pytest.mark.fixtures
@pytest.mark.parametrize("case", ["moe_kagn2d_e4_k2", "moe_kagn2d_e4_k4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_moe(case, dtype):
    """Error model: the reference renormalises the top-k softmax probabilities by (sum + 1e-6), a
    relative 1e-6 / sum <= 2e-6 here that we do not copy; float32 rounding adds ~3e-7 (its float64
    output is float32, see the fixture README, so both dtypes compare with the float32 output). With
    the reference's epsilon put back, only the rounding remains (< 1e-6)."""
    layer, tensors = _reference_moe(case)
    layer = layer.to(dtype)
    x = tensors["input"].to(dtype)
    with torch.no_grad():
        y = layer(x)
        routing = layer.route(x)
        probs = torch.softmax(x.mean((2, 3)) @ layer.w_gate, dim=1)
        top_sum = probs.gather(1, routing.experts).sum(1, keepdim=True)
        weights = routing.weights * top_sum / (top_sum + 1e-6)
        with_eps = layer.combine(x, routing._replace(weights=weights, gates=routing.gates.scatter(
            1, routing.experts, weights)))
    assert relative_error(y, tensors["output_eval"]) < 1e-6 / top_sum.min().item() + 1e-6
    assert relative_error(with_eps, tensors["output_eval"]) < 1e-6
    assert relative_error((1e-2 * layer.aux_loss).reshape(1), tensors["aux_loss"]) < 1e-5
