"""kan_zoo.viz: the plotted phi equals the layer's measured response to a probe; PNGs and the CLI work."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv2d, KANLinear
from kan_zoo.viz import edge_functions, edge_scores, kan_layers, main, plot_layer, summarize

pytest.importorskip("matplotlib", reason="kan_zoo.viz draws with matplotlib (pip install matplotlib)")

GRID = dict(num_points=9)


def _phi(edges, o, j_local):
    """The whole edge function (basis + base) at each grid point."""
    phi = edges.basis[o, j_local]
    return phi + edges.base[o, j_local] if edges.base is not None else phi


def _probe(layer: nn.Module, x: torch.Tensor, j: int, run) -> torch.Tensor:
    """run() on inputs that are 0 everywhere except input channel j, which is x over the whole patch."""
    k = layer.kernel_size
    u = torch.zeros((x.numel(), layer.in_channels) + tuple(k), dtype=x.dtype)
    u[:, j] = x.reshape((-1,) + (1,) * len(k))
    return run(u).flatten(1)  # (P, C_out): one output position covers the patch


@pytest.mark.parametrize("basis", sorted(BASES))
def test_phi_matches_probe_of_grouped_conv(basis):
    torch.manual_seed(0)
    layer = KANConv2d(4, 6, 3, groups=2, basis=basis, degree=3, norm_layer=None).double().eval()
    layer.act = nn.Identity()  # phi is defined before norm and activation
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move off the init (e.g. zero translations, unit scales)
    edges = edge_functions(layer, **GRID)
    zero = edge_functions(layer, x_range=(0.0, 0.0), num_points=1)
    with torch.no_grad():
        for j in range(layer.in_channels):
            y = _probe(layer, edges.x, j, layer) - _probe(layer, torch.zeros(1, dtype=torch.float64), j, layer)
            for o in range(layer.out_channels):
                hits = (edges.inputs[o] == j).nonzero()
                if len(hits) == 0:  # input j is in another group: no edge, no response
                    torch.testing.assert_close(y[:, o], torch.zeros_like(y[:, o]), atol=1e-12, rtol=0)
                    continue
                jl = int(hits[0])
                expected = _phi(edges, o, jl) - _phi(zero, o, jl)
                torch.testing.assert_close(y[:, o], expected, atol=1e-10, rtol=1e-8)


def test_phi_of_kan_linear_matches_its_response():
    torch.manual_seed(1)
    layer = KANLinear(5, 3, basis="bspline", output_activation=False).double().eval()
    edges = edge_functions(layer, **GRID)
    with torch.no_grad():
        for j in range(5):
            u = torch.zeros(edges.x.numel(), 5, dtype=torch.float64)
            u[:, j] = edges.x
            y = layer(u) - layer(torch.zeros(1, 5, dtype=torch.float64))
            zero = edge_functions(layer, x_range=(0.0, 0.0), num_points=1)
            for o in range(3):
                torch.testing.assert_close(y[:, o], _phi(edges, o, j) - _phi(zero, o, j))


def test_bottleneck_phi_acts_on_inner_channels():
    torch.manual_seed(2)
    layer = BottleneckKANConv2d(8, 8, 3, groups=2, basis="gram", dim_reduction=2.0).double().eval()
    edges = edge_functions(layer, **GRID)
    zero = edge_functions(layer, x_range=(0.0, 0.0), num_points=1)
    assert edges.inner and edges.basis.shape[0] == layer.groups * layer.inner
    assert edges.base.shape[:2] == (layer.out_channels, layer.in_channels // layer.groups)

    def inner_conv(u):
        return layer.expand_conv(None, u)

    inner_layer = type("Inner", (), {"kernel_size": layer.kernel_size, "in_channels": layer.groups * layer.inner})
    with torch.no_grad():
        for j in range(layer.groups * layer.inner):
            y = _probe(inner_layer, edges.x, j, inner_conv)
            y = y - _probe(inner_layer, torch.zeros(1, dtype=torch.float64), j, inner_conv)
            for o in range(edges.num_outputs):
                hits = (edges.inputs[o] == j).nonzero()
                expected = (edges.basis[o, int(hits[0])] - zero.basis[o, int(hits[0])]) if len(hits) else 0 * y[:, o]
                torch.testing.assert_close(y[:, o], expected)
        # The base branch: its own weight over the outer channels.
        def base_conv(u):
            return layer._conv(layer.basis.base(u), layer.base_weight, layer.groups)
        y = _probe(layer, edges.x, 5, base_conv)
        o = layer.out_channels - 1  # group 1 holds inputs 4..7: local input 1
        torch.testing.assert_close(y[:, o], edges.base[o, 1])


def test_scores_single_out_the_one_nonlinear_edge():
    layer = KANConv2d(3, 4, 3, basis="legendre", norm_layer=None).double()  # base branch: identity
    with torch.no_grad():
        layer.coefficients()[:, 1:].zero_()  # only linear base edges...
        layer.coefficients()[2, 3, 1, 1, 1] = 0.5  # ...and one quadratic term on edge 1 -> 2
    s = edge_scores(edge_functions(layer))
    assert s["nonlinearity"].argmax() == 2 * 3 + 1
    assert s["nonlinearity"].flatten().sort().values[-2] < 1e-12  # straight lines score 0
    row = summarize(nn.Sequential(layer), top=1)[0]
    assert row["top_edges"][0][:2] == (1, 2) and row["top10_share"] > 0.999


def test_unsupported_module_raises():
    with pytest.raises(TypeError, match="not a KAN layer"):
        edge_functions(nn.Conv2d(2, 2, 3))


def test_plot_layer_writes_a_nontrivial_png(tmp_path):
    import matplotlib.image

    layer = KANConv2d(3, 4, 3, basis="gram")
    out = plot_layer(layer, tmp_path / "phi.png", max_outputs=3, max_inputs=3)
    img = matplotlib.image.imread(out)
    assert out.stat().st_size > 5000 and img.shape[0] > 200 and img[..., :3].std() > 0.05


def test_cli_on_an_exported_folder(tmp_path, capsys):
    import timm

    import kan_zoo  # noqa: F401
    from kan_zoo.hub import export_to_folder

    model = timm.create_model("kan_test_vgg_gram", num_classes=3)
    folder = export_to_folder(model, tmp_path / "export")
    names = list(kan_layers(model))
    rc = main([str(folder), "--layer", names[0], "--out", str(tmp_path / "l.png"), "--scores", str(tmp_path / "s.png")])
    text = capsys.readouterr().out
    assert rc == 0 and all(n in text for n in names)
    assert (tmp_path / "l.png").stat().st_size > 5000 and (tmp_path / "s.png").stat().st_size > 5000
    with pytest.raises(SystemExit):
        main([str(folder), "--layer", "no.such.layer", "--out", str(tmp_path / "x.png")])
    assert "KAN layers: " + names[0] in capsys.readouterr().err


def test_cli_on_a_weights_file(tmp_path, capsys):
    import safetensors.torch
    import timm

    import kan_zoo  # noqa: F401

    model = timm.create_model("kan_test_resnet_relu", num_classes=3, in_chans=1)
    safetensors.torch.save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    weights = str(tmp_path / "model.safetensors")
    assert main([weights, "--arch", "kan_test_resnet_relu", "--in-chans", "1"]) == 0
    assert "layer4.0.conv2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([weights])
    assert "--arch" in capsys.readouterr().err
