"""Memory-efficient mode and the fused expand+conv node: same numbers, less kept for backward, no growth."""
import copy
import functools
import gc
import warnings

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv2d, KANLinear, set_memory_efficient
from layer_helpers import (assert_same_results, gradient_penalty_grads, plain_autograd_copy, run_with_grads,
                           saved_bytes)

BOTTLENECK_BASES = [b for b, cls in BASES.items() if cls.separable and not cls.normalizes_input]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


_assert_same = functools.partial(assert_same_results, rtol=1e-5, atol=1e-6, grad_rtol=1e-4, grad_atol=1e-5)


def _layers():
    for basis in BASES:
        yield basis, KANConv2d(8, 8, 3, padding=1, groups=2, basis=basis, dropout=0.2)
    for basis in BOTTLENECK_BASES:
        yield f"bottleneck-{basis}", BottleneckKANConv2d(8, 8, 3, padding=1, groups=2, basis=basis, dim_reduction=2)


@pytest.mark.parametrize("name,layer", list(_layers()), ids=[n for n, _ in _layers()])
def test_memory_efficient_and_fused_match_plain_autograd(name, layer):
    # float64 (see test_chunked_fast_path_matches_plain_autograd): in float32 gram's beta_weights gradient,
    # summed in another order by each path, missed the tolerance below for one init in 30.
    layer = copy.deepcopy(layer).double()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    default = run_with_grads(layer.train(), x)
    efficient = copy.deepcopy(layer)
    assert set_memory_efficient(efficient) == 1 and efficient.memory_efficient
    assert_same_results(run_with_grads(efficient, x), default, rtol=1e-10, atol=1e-11)
    assert_same_results(run_with_grads(plain_autograd_copy(layer), x), default, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("budget", [49, 20], ids=["one-sample", "rows"])
@pytest.mark.parametrize("name,layer", list(_layers()), ids=[n for n, _ in _layers()])
def test_chunked_fast_path_matches_plain_autograd(name, layer, budget, monkeypatch):
    """The CPU fast path expands (and back-propagates through) the basis a piece of the batch at a
    time; forced down to one sample, or a few rows of one, per piece it still equals plain autograd,
    in both modes and in inference. Without the C kernels, which tile the input themselves."""
    from kan_zoo.layers import conv, helpers
    from kan_zoo.layers.kernels import fused, switches

    monkeypatch.setattr(switches.NATIVE_KERNELS, "enabled", False)

    if not layer.basis.separable:
        pytest.skip("the wavelet basis has its own chunking (tests/layers/test_fused_wavelet.py)")
    # float64: the chunks sum gradients (gram's beta_weights over every position) in another order than plain
    # autograd, and in float32 that difference reached 5e-5 on a gradient element of 0.29 for one init in 40
    # (the layers are built at collection, so the init depends on what was collected before).
    layer = copy.deepcopy(layer).double()  # the shared instance may hold gradients of another test
    monkeypatch.setattr(helpers, "CHUNK_ELEMENTS", budget)
    pieces = []
    for module in (conv, fused):
        def spy(t, *args, _chunks=module.batch_chunks):
            found = _chunks(t, *args)
            pieces.append(found)
            return found

        monkeypatch.setattr(module, "batch_chunks", spy)
    x = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    reference = run_with_grads(plain_autograd_copy(layer).train(), x)
    assert_same_results(run_with_grads(layer.train(), x), reference, rtol=1e-10, atol=1e-11)
    efficient = copy.deepcopy(layer)
    set_memory_efficient(efficient)
    assert_same_results(run_with_grads(efficient, x), reference, rtol=1e-10, atol=1e-11)
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), plain_autograd_copy(layer).eval()(x), rtol=1e-10, atol=1e-11)
    assert pieces and all(len(found) >= 3 for found in pieces)
    if budget == 20:  # less than one sample: rows of the first spatial dimension
        assert all(chunk[1] != slice(None) for found in pieces for chunk in found)


@pytest.mark.parametrize("shape,budget", [((3, 8, 7, 7), 1000), ((3, 8, 7, 7), 49), ((3, 8, 7, 7), 20),
                                          ((2, 4, 5), 3), ((4, 2, 3, 3, 3), 10), ((0, 4, 5), 1), ((5, 3), 4)])
def test_batch_chunks_cover_the_tensor_once(shape, budget):
    from kan_zoo.layers.helpers import batch_chunks, take

    x = torch.zeros(shape)
    assert batch_chunks(x.to("meta"), 1) == [(slice(None), slice(None))]  # CPU only
    for chunk in batch_chunks(x, budget):
        piece = take(x, chunk)
        assert piece.numel() <= max(budget, x[0, :, 0].numel() if x.dim() > 2 and x.shape[0] else budget)
        piece += 1
    assert torch.equal(x, torch.ones(shape))


def test_kan_linear_and_strided_memory_efficient():
    assert KANLinear(6, 3, memory_efficient=True).memory_efficient
    head = KANLinear(6, 3, basis="chebyshev", norm_layer="batch")
    lean = copy.deepcopy(head)
    lean.memory_efficient = True
    x = torch.randn(5, 6)
    _assert_same(run_with_grads(lean, x), run_with_grads(head, x))
    conv = KANConv2d(4, 6, 3, stride=2, padding=2, dilation=2, basis="legendre", memory_efficient=True)
    x = torch.randn(2, 4, 9, 9)
    _assert_same(run_with_grads(conv, x), run_with_grads(plain_autograd_copy(conv), x))


@pytest.mark.parametrize("basis", list(BASES))
def test_memory_efficient_keeps_at_most_1_5x_a_plain_conv(basis):
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    plain = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
    layer = KANConv2d(16, 16, 3, padding=1, groups=2, basis=basis, memory_efficient=True)
    assert saved_bytes(layer, x) <= 1.5 * saved_bytes(plain, x)
    layer.memory_efficient = False
    if BASES[basis].separable:  # the default mode keeps more: the (basis size + 1) x stacked basis
        assert saved_bytes(layer, x) > 1.5 * saved_bytes(plain, x)
    else:  # the chunked wavelet node keeps only its input in either mode (tests/layers/test_fused_wavelet.py)
        assert saved_bytes(layer, x) <= 1.5 * saved_bytes(plain, x)


def test_memory_efficient_bottleneck_bound_at_its_usual_reduction():
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    plain = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.SiLU())
    layer = BottleneckKANConv2d(64, 64, 3, padding=1, dim_reduction=8, memory_efficient=True)
    assert saved_bytes(layer, x) <= 1.5 * saved_bytes(plain, x)


def test_no_memory_growth_over_training_steps():
    """No tensor caching across steps: live tensors and saved bytes stay flat over a training loop."""
    torch.manual_seed(0)
    model = nn.Sequential(
        KANConv2d(3, 8, 3, padding=1, basis="gram"), BottleneckKANConv2d(8, 8, 3, padding=1, basis="legendre"),
        KANConv2d(8, 8, 3, padding=1, groups=2, basis="wavelet"), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        KANLinear(8, 4, basis="rbf"),
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance on every object touches torch's deprecated module attributes
            warnings.simplefilter("ignore", FutureWarning)
            # Fake tensors are a compiler's: an earlier torch.compile test in this process leaves some that
            # die at some later step of this loop, which is not this model's memory.
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and not isinstance(o, FakeTensor))

    def step(x: torch.Tensor) -> None:
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    counts, saved = {}, []
    for i in range(30):
        if i == 15:
            saved.append(saved_bytes(model, x))
            set_memory_efficient(model)
            saved.append(saved_bytes(model, x))
        x = torch.randn(4, 3, 10, 10)  # a fresh batch each step, as in training
        step(x)
        if i in (2, 14, 17, 29):  # counting is slow (gc.get_objects), so at a few steps only
            counts[i] = live_tensors()
    # Step 0 creates the optimizer state; after that nothing may accumulate, in either mode.
    # (The saved-tensor hooks of _saved_bytes themselves retain a few views, hence two pairs.)
    assert counts[2] == counts[14] and counts[17] == counts[29], counts
    assert saved[1] < saved[0]



@pytest.mark.parametrize("basis", ["gram", "legendre"])  # hand-written adjoint / autograd replay
def test_memory_efficient_gradcheck(basis):
    """float64 finite differences for the input and every parameter in memory-efficient mode (the
    default mode's fused node is gradchecked for every basis by test_layers.py)."""
    from torch.func import functional_call

    layer = KANConv2d(4, 4, 3, padding=1, groups=2, basis=basis, degree=2, norm_layer="batch",
                      memory_efficient=True).double()
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def run(inp, *ps):
        return functional_call(layer, dict(zip(names, ps)), (inp,))

    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x,) + params, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_double_backward_gradient_penalty(memory_efficient):
    """create_graph=True still works through the fused node and equals the plain autograd path."""
    layer = KANConv2d(4, 4, 3, padding=1, groups=2, basis="gram", memory_efficient=memory_efficient).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    results = [gradient_penalty_grads(model, x) for model in (layer, plain_autograd_copy(layer))]
    for name, grad in results[0].items():
        torch.testing.assert_close(grad, results[1][name], msg=name)
