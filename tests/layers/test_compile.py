"""torch.compile over every basis: one compiled model holding a layer of each, output equal to eager."""
import copy

import pytest
import torch
from torch import nn

from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv2d, conv, fused
from layer_helpers import run_with_grads


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("graph", ["eager node outside the graph", "plain ops in the graph"])
def test_compiled_model_with_every_basis_matches_eager(graph, monkeypatch):
    """CPU graphs call the fused node outside the graph; GPUs compile the plain ops, checked here on CPU."""
    if graph == "plain ops in the graph":
        monkeypatch.setattr(conv, "_calls_eager_node_from_graph", lambda u: False)
    torch.manual_seed(0)
    # One model, one compilation: compiling is slow on a small CPU, so every basis shares it.
    model = nn.Sequential(
        *(KANConv2d(4, 4, 3, padding=1, groups=2, basis=b, norm_layer="batch") for b in BASES),
        BottleneckKANConv2d(4, 4, 3, padding=1, basis="gram", norm_layer="batch"),
    ).train()
    x = torch.randn(2, 4, 6, 6)
    compiled = torch.compile(model, dynamic=False)
    # Forward only: compiling the backward graph too would double the (slow) compile time; the
    # compiled training step is exercised by benchmarks/bench_layers.py --compile.
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("basis", ["gram", "bspline", "gram bottleneck"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_compiled_cpu_training_step_runs_the_fused_node(basis, memory_efficient, monkeypatch):
    """The eager fused node beat inductor's code for the plain ops on CPU (0.71-0.86x), so compiled
    models call it outside the graph: outputs and gradients equal eager, the node ran each step. The
    bottleneck's narrow inner conv compiles well, so its graph keeps the plain ops."""
    torch._dynamo.reset()  # earlier tests' layers may have used up the recompile limit: then nothing compiles
    calls = []
    apply = fused.ExpandConvFunction.apply
    monkeypatch.setattr(fused.ExpandConvFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    torch.manual_seed(0)
    bottleneck = basis.endswith("bottleneck")
    cls = BottleneckKANConv2d if bottleneck else KANConv2d
    layer = cls(4, 6, 3, padding=1, groups=2, basis=basis.split()[0], memory_efficient=memory_efficient).train()
    x = torch.randn(2, 4, 6, 6)
    y, grads = run_with_grads(layer, x)
    y_compiled, grads_compiled = run_with_grads(torch.compile(copy.deepcopy(layer), backend="eager"), x)
    assert len(calls) == (1 if bottleneck else 2)
    exact = {} if bottleneck else {"rtol": 0, "atol": 0}  # the same node, or plain ops up to rounding
    torch.testing.assert_close(y_compiled, y, **exact)
    for name, grad in grads.items():
        key = name if name == "input" else "_orig_mod." + name
        torch.testing.assert_close(grads_compiled[key], grad, msg=name, **exact)


@pytest.mark.parametrize("basis", ["gram", "wavelet"])
def test_fullgraph_compile_needs_the_switch_and_then_equals_eager(basis, monkeypatch):
    """fullgraph=True refuses the graph break around the eager node with an error naming the switch;
    with the switch off the graph holds the plain ops and gives eager's output and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = KANConv2d(4, 6, 3, padding=1, groups=2, basis=basis).train()
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(Exception, match="compile_calls_eager_node = False"):
        torch.compile(copy.deepcopy(layer), fullgraph=True, backend="eager")(x)
    monkeypatch.setattr(conv.KANConvNd, "compile_calls_eager_node", False)
    torch._dynamo.reset()
    y, grads = run_with_grads(layer, x)
    y_compiled, grads_compiled = run_with_grads(torch.compile(copy.deepcopy(layer), fullgraph=True, backend="eager"), x)
    torch.testing.assert_close(y_compiled, y)
    for name, grad in grads.items():
        key = name if name == "input" else "_orig_mod." + name
        torch.testing.assert_close(grads_compiled[key], grad, msg=name)
