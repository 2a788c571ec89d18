"""torch.compile over every basis: compiled equals eager, with and without the eager nodes in the graph."""
import copy

import pytest
import torch
from torch import nn

from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv2d, KANConvNd
from kan_zoo.layers.kernels import fused
from layer_helpers import native_kernels_switched, run_with_grads


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def node_calls(monkeypatch):
    """A list that grows by one on every call of the separable bases' fused node."""
    calls = []
    apply = fused.ExpandConvFunction.apply
    monkeypatch.setattr(fused.ExpandConvFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    torch._dynamo.reset()  # earlier tests' layers may have used up the recompile limit: then nothing compiles
    return calls


def compiled_and_eager(layer, x, **compile_options):
    """(output, gradients) of a compiled copy of ``layer`` and of ``layer`` itself."""
    compiled = torch.compile(copy.deepcopy(layer), backend="eager", **compile_options)
    y_compiled, grads_compiled = run_with_grads(compiled, x)
    y, grads = run_with_grads(layer, x)
    return (y_compiled, {k.removeprefix("_orig_mod."): g for k, g in grads_compiled.items()}), (y, grads)


@pytest.mark.parametrize("switch", [None, True])
def test_compiled_model_with_every_basis_matches_eager(switch, monkeypatch):
    """Inductor on CPU, forward, a layer of every basis; with the switch on, the separable layers call
    their eager node from the graph."""
    monkeypatch.setattr(KANConvNd, "compile_calls_eager_node", switch)
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
def test_switch_on_compiled_cpu_training_step_runs_the_fused_node(basis, memory_efficient, node_calls, monkeypatch):
    """compile_calls_eager_node = True: compiled CPU graphs call the fused node outside the graph, so
    outputs and gradients equal eager exactly. The bottleneck never does (its inner conv compiles well)."""
    monkeypatch.setattr(KANConvNd, "compile_calls_eager_node", True)
    torch.manual_seed(0)
    bottleneck = basis.endswith("bottleneck")
    cls = BottleneckKANConv2d if bottleneck else KANConv2d
    layer = cls(4, 6, 3, padding=1, groups=2, basis=basis.split()[0], memory_efficient=memory_efficient).train()
    (y_compiled, grads_compiled), (y, grads) = compiled_and_eager(layer, torch.randn(2, 4, 6, 6))
    assert len(node_calls) == (1 if bottleneck else 2)
    exact = {} if bottleneck else {"rtol": 0, "atol": 0}  # the same node, or plain ops up to rounding
    torch.testing.assert_close(y_compiled, y, **exact)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name], grad, msg=name, **exact)


@pytest.mark.parametrize("basis", ["gram", "relu"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_by_default_a_separable_layer_compiles_into_one_graph(basis, memory_efficient, node_calls):
    """The default keeps the plain ops in the graph (gram: without its constant block, in closed form;
    memory-efficient mode: checkpointed): fullgraph=True works, the node is not called."""
    torch.manual_seed(0)
    layer = KANConv2d(4, 6, 3, padding=1, groups=2, basis=basis, memory_efficient=memory_efficient).train()
    (y_compiled, grads_compiled), (y, grads) = compiled_and_eager(layer, torch.randn(2, 4, 6, 6), fullgraph=True)
    assert len(node_calls) == 1  # the eager run only
    torch.testing.assert_close(y_compiled, y)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name], grad, msg=name)


@pytest.mark.parametrize("basis", ["gram", "wavelet"])
def test_fullgraph_refuses_the_eager_nodes_with_a_hint_and_works_with_the_switch_off(basis, monkeypatch):
    """Where a graph would call an eager node (the wavelet's by default, every basis's with the switch
    on) fullgraph=True fails with an error naming the switch; switched off, compiled equals eager."""
    monkeypatch.setattr(KANConvNd, "compile_calls_eager_node", True if basis == "gram" else None)
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = KANConv2d(4, 6, 3, padding=1, groups=2, basis=basis).train()
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(Exception, match="compile_calls_eager_node = False"):
        torch.compile(copy.deepcopy(layer), fullgraph=True, backend="eager")(x)
    monkeypatch.setattr(KANConvNd, "compile_calls_eager_node", False)
    torch._dynamo.reset()
    (y_compiled, grads_compiled), (y, grads) = compiled_and_eager(layer, x, fullgraph=True)
    torch.testing.assert_close(y_compiled, y)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name], grad, msg=name)


@pytest.mark.parametrize("basis,functions", [("gram", 4), ("chebyshev", 3), ("bspline", 9)])
def test_compiled_graph_leaves_the_constant_function_out_of_the_convolution(basis, functions):
    """A basis with P_0 = 1 convolves one block fewer in compiled graphs (its share added in closed form
    by a one-channel conv), as the eager nodes do; bspline has no constant function."""
    weight_shapes = []

    def recording_backend(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and "conv" in str(node.target):
                weight_shapes.append(tuple(node.args[1].meta["example_value"].shape))
        return gm

    torch._dynamo.reset()
    layer = KANConv2d(4, 6, 3, padding=1, basis=basis, degree=3)
    torch.compile(layer, backend=recording_backend, fullgraph=True)(torch.randn(2, 4, 5, 5))
    main_conv = (6, 4 * functions, 3, 3)
    expected = [main_conv] if basis == "bspline" else [main_conv, (6, 1, 3, 3)]
    assert weight_shapes == expected


@pytest.mark.parametrize("basis", ["bspline", "relu", "rbf"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_compiled_graphs_call_the_c_kernels_as_custom_ops(basis, memory_efficient):
    """The grid bases' graphs (one graph, fullgraph) call their C kernels as kan_zoo custom ops with their own
    backward (kan_zoo.layers.kernels.native_ops); compiled equals eager, gradients (relu's phases too) included; with
    the kernels off the graph has the plain ops again."""
    targets = []

    def recording_backend(gm, example_inputs):
        for module in gm.modules():  # with the subgraphs of higher-order ops (memory-efficient mode's checkpoint)
            if isinstance(module, torch.fx.GraphModule):
                targets.extend(str(node.target) for node in module.graph.nodes if node.op == "call_function")
        return gm

    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = KANConv2d(4, 6, 3, padding=1, groups=2, basis=basis, memory_efficient=memory_efficient).double().train()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    compiled = torch.compile(copy.deepcopy(layer), backend=recording_backend, fullgraph=True)
    y_compiled, grads_compiled = run_with_grads(compiled, x)
    y, grads = run_with_grads(layer, x)
    assert f"kan_zoo.{basis}_basis.default" in targets
    torch.testing.assert_close(y_compiled, y, rtol=1e-12, atol=1e-12)
    assert {k.removeprefix("_orig_mod.") for k in grads_compiled} == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled["_orig_mod." + name if name != "input" else name], grad,
                                   rtol=1e-11, atol=1e-12, msg=name)
    targets.clear()
    torch._dynamo.reset()
    with native_kernels_switched(False):
        torch.compile(copy.deepcopy(layer), backend=recording_backend, fullgraph=True)(x)
    assert targets and not any("kan_zoo" in target for target in targets)
