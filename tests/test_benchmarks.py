"""The benchmarks' yardsticks compute what they claim (the figures themselves come from the scripts)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_layers  # noqa: E402


def test_wavelet_floor_is_the_layers_own_convs_on_its_precomputed_wavelet_tensor():
    """Given SiLU(x) and every edge's psi((x_j - tau_oj) / s_oj) precomputed, the floor with the layer's
    weights returns the layer's output: it does the layer's conv work and nothing of the expansion."""
    torch.manual_seed(0)
    shape = bench_layers.Shape(n=2, channels=4, size=6)
    layer = bench_layers.build_kan("wavelet", shape, memory_efficient=False).double().train()
    floor = bench_layers.Floor(layer, shape).double().train()
    basis = layer.basis
    with torch.no_grad():
        floor.conv.weight.copy_(layer.weight)
        floor.edge_conv.weight.copy_(basis.wavelet_weight)
        floor.mix.weight.copy_(basis.mix_weight)
        basis.translation.normal_()  # away from the defaults, so that a misplaced edge would show
        basis.scale.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    z = (x[:, None] - basis.translation[None, :, :, None, None]) / basis.scale[None, :, :, None, None]
    precomputed = torch.cat([basis.base(x), basis.psi(z).flatten(1, 2)], 1)  # output-major, as the grouped conv reads
    assert precomputed.shape[1] == shape.channels * (bench_layers.basis_size(layer) + 1) == 4 * 5
    with torch.no_grad():
        torch.testing.assert_close(floor(precomputed), layer(x), rtol=1e-10, atol=1e-12)


def test_separable_floor_reads_basis_size_plus_one_blocks():
    shape = bench_layers.Shape(n=1, channels=4, size=5)
    layer = bench_layers.build_kan("gram-d5", shape, memory_efficient=False)
    floor = bench_layers.Floor(layer, shape)
    assert bench_layers.basis_size(layer) == 6 and floor.conv.in_channels == 4 * 7
