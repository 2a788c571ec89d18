"""The chunked wavelet node (kan_zoo.layers.kernels.fused_wavelet) against the plain wavelet ops."""
import copy
import itertools

import pytest
import torch

from kan_zoo.layers import KANConv1d, KANConv2d, KANConv3d
from kan_zoo.layers.kernels import fused_wavelet
from kan_zoo.layers.bases.wavelet import WAVELETS
from layer_helpers import (assert_same_results, gradient_penalty_grads, plain_autograd_copy, run_with_grads,
                           saved_bytes)

CONVS = {1: KANConv1d, 2: KANConv2d, 3: KANConv3d}
GEOMETRIES = [
    dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=2),
    dict(kernel_size=3, stride=1, padding=0, dilation=1, groups=1),
    dict(kernel_size=3, stride=2, padding=1, dilation=1, groups=2),
    dict(kernel_size=3, stride=2, padding=0, dilation=1, groups=1),  # the last input row is never read
    dict(kernel_size=3, stride=1, padding=2, dilation=2, groups=4),
    dict(kernel_size=5, stride=3, padding=4, dilation=2, groups=1),  # taps whose window misses the input
    dict(kernel_size=1, stride=3, padding=0, dilation=1, groups=1),
    dict(kernel_size=5, stride=1, padding="same", dilation=1, groups=2),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of a few elements, so every layer here is cut along outputs AND positions."""
    monkeypatch.setitem(fused_wavelet._CHUNK_ELEMENTS, "cpu", 37)


@pytest.fixture
def node_calls(monkeypatch):
    """A list that grows by one on every call of the chunked node."""
    calls = []
    apply = fused_wavelet.WaveletConvFunction.apply
    monkeypatch.setattr(fused_wavelet.WaveletConvFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


def _assert_paths_agree(layer, x):
    """The chunked node and the plain wavelet ops (plain_autograd_copy) give the same output and the
    same gradient for the input and every parameter."""
    y, grads = run_with_grads(layer, x)
    y_ref, grads_ref = run_with_grads(plain_autograd_copy(layer), x)
    every = {name for name, _ in layer.named_parameters()} | {"input"}
    assert set(grads) == set(grads_ref) == every
    assert_same_results((y, grads), (y_ref, grads_ref), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("chunks", ["default", "tiny"])
def test_chunked_node_equals_the_plain_ops(ndim, geometry, chunks, request):
    if chunks == "tiny":
        request.getfixturevalue("tiny_chunks")
    torch.manual_seed(0)
    layer = CONVS[ndim](8, 12, basis="wavelet", norm_layer="batch", **geometry).double()
    with torch.no_grad():  # scales and translations away from their initial 1 and 0
        layer.basis.scale.uniform_(0.5, 2.0)
        layer.basis.translation.normal_(0, 0.5)
    _assert_paths_agree(layer, torch.randn(2, 8, *(9, 8, 7)[:ndim], dtype=torch.float64))


@pytest.mark.parametrize("wavelet_type", list(WAVELETS))
def test_every_wavelet_with_dropout_and_chunks(wavelet_type, tiny_chunks):
    """Closed-form derivatives (mexican_hat, morlet, dog) and autograd per chunk (meyer, shannon)."""
    torch.manual_seed(0)
    layer = KANConv2d(6, 4, 3, padding=1, groups=2, basis="wavelet", wavelet_type=wavelet_type, dropout=0.3)
    layer = layer.double().train()
    with torch.no_grad():
        layer.basis.scale.uniform_(0.3, 1.5)
        layer.basis.translation.normal_(0, 0.7)
    _assert_paths_agree(layer, torch.randn(3, 6, 7, 6, dtype=torch.float64))


def test_inference_equals_training_forward_and_the_plain_ops():
    layer = KANConv2d(8, 8, 3, padding=1, basis="wavelet", norm_layer="none").eval()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        inference = layer(x)
    torch.testing.assert_close(inference, layer(x).detach())
    torch.testing.assert_close(inference, plain_autograd_copy(layer)(x).detach(), rtol=1e-5, atol=1e-5)


def test_the_node_keeps_only_its_input():
    """The plain ops keep the (C_out / groups) x input wavelet tensor; the node only its input, so
    the layer keeps about what a plain conv + BatchNorm + SiLU does, in the default mode too."""
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    layer = KANConv2d(16, 16, 3, padding=1, basis="wavelet")
    assert not layer.memory_efficient
    plain_conv = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.SiLU())
    assert saved_bytes(plain_autograd_copy(layer), x) > 16 * x.numel() * x.element_size()
    assert saved_bytes(layer, x) <= 1.5 * saved_bytes(plain_conv, x)


def test_double_backward_replays_the_plain_ops():
    layer = KANConv2d(4, 4, 3, padding=1, groups=2, basis="wavelet").double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    results = [gradient_penalty_grads(model, x) for model in (layer, plain_autograd_copy(layer))]
    for name, grad in results[0].items():
        torch.testing.assert_close(grad, results[1][name], msg=name)


@pytest.mark.parametrize("groups,outputs,inputs,positions,budget", [
    (2, 3, 4, 10, 37), (1, 5, 2, 7, 1000), (3, 2, 8, 5, 3), (1, 4, 4, 6, 48),
])
def test_chunks_cover_every_output_and_position_once(groups, outputs, inputs, positions, budget):
    seen = []
    for g, o, p in fused_wavelet._chunks(groups, outputs, inputs, positions, budget):
        assert g * outputs <= o.start < o.stop <= (g + 1) * outputs  # a chunk never crosses a group
        assert (o.stop - o.start) * inputs * (p.stop - p.start) <= max(budget, inputs)
        seen += itertools.product(range(o.start, o.stop), range(p.start, p.stop))
    assert sorted(seen) == list(itertools.product(range(groups * outputs), range(positions)))


def test_compiled_models_call_the_node_outside_the_graph(node_calls):
    """Under torch.compile the node runs eagerly behind a graph break (the compiled plain ops were 3x
    slower and kept the whole wavelet tensor); outputs and gradients equal eager."""
    torch.manual_seed(0)
    layer = KANConv2d(4, 6, 3, padding=1, groups=2, basis="wavelet").train()
    x = torch.randn(2, 4, 6, 6)
    y, grads = run_with_grads(layer, x)
    y_compiled, grads_compiled = run_with_grads(torch.compile(copy.deepcopy(layer), backend="eager"), x)
    assert len(node_calls) == 2
    torch.testing.assert_close(y_compiled, y)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name if name == "input" else "_orig_mod." + name], grad, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (benchmarks/gpu_session.sh runs this file)")
@pytest.mark.parametrize("chunks", ["default", "tiny"])
def test_chunked_node_on_cuda(chunks, monkeypatch):
    if chunks == "tiny":
        monkeypatch.setitem(fused_wavelet._CHUNK_ELEMENTS, "cuda", 4096)
    torch.manual_seed(0)
    layer = KANConv2d(8, 12, 3, stride=2, padding=1, groups=2, basis="wavelet", dropout=0.1).double().cuda()
    _assert_paths_agree(layer, torch.randn(2, 8, 17, 15, dtype=torch.float64, device="cuda"))


def test_bf16_autocast_takes_the_node_and_is_as_accurate_as_the_plain_ops(node_calls):
    """Under autocast the node computes psi in float32 and its matmuls in bfloat16, as the plain ops
    do with their convolution: same output dtype, errors against float64 of the same size."""
    torch.manual_seed(0)
    layer = KANConv2d(8, 12, 3, padding=1, groups=2, basis="wavelet")
    with torch.no_grad():
        layer.basis.scale.uniform_(0.5, 2.0)
        layer.basis.translation.normal_(0, 0.5)
    x = torch.randn(2, 8, 9, 9)
    y_exact, grads_exact = run_with_grads(plain_autograd_copy(layer).double(), x.double())
    errors = {}
    for name, module in (("node", layer), ("plain", plain_autograd_copy(layer))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, grads = run_with_grads(module, x)
        assert y.dtype == torch.bfloat16 and grads["input"].dtype == torch.float32
        assert all(g.dtype == torch.float32 for g in grads.values())
        assert set(grads) == set(grads_exact)
        pairs = [(y, y_exact)] + [(grads[k], grads_exact[k]) for k in grads]
        errors[name] = [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in pairs]
    assert len(node_calls) == 1
    for node_error, plain_error in zip(errors["node"], errors["plain"]):
        assert node_error < max(2 * plain_error, 4e-3)


def test_empty_batch_and_channels_last_input():
    torch.manual_seed(0)
    layer = KANConv2d(4, 6, 3, padding=1, basis="wavelet", norm_layer="none").double()
    empty = torch.randn(0, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    y = layer(empty)
    assert y.shape == (0, 6, 5, 5)
    y.sum().backward()
    assert empty.grad.shape == empty.shape and layer.basis.scale.grad.abs().sum() == 0
    layer.zero_grad()
    _assert_paths_agree(layer, torch.randn(2, 4, 5, 7, dtype=torch.float64).to(memory_format=torch.channels_last))
