"""torch.compile over every basis: one compiled model holding a layer of each, output equal to eager."""
import pytest
import torch
from torch import nn

from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv2d


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_compiled_model_with_every_basis_matches_eager():
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
