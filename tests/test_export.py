"""kan_zoo.export: ONNX graphs that onnxruntime runs to PyTorch's result, torch.export, and clear errors."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import kan_zoo  # noqa: F401  registers the kan_* models
from kan_zoo.export import ExportError, ExportMismatchError, check_onnx, export_onnx, export_program
from kan_zoo.layers import BASES, BottleneckKANConv2d, KANConv2d, KANLinear, set_memory_efficient

for _name in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_name, reason=f"ONNX export tests need {_name} (pip install 'kan_zoo[test]')")
import onnxruntime as ort  # noqa: E402

RTOL = 1e-4
BASIS_NAMES = sorted(BASES)
INPUT = (2, 6, 6)


class EveryBasis(nn.Module):
    """One small KAN conv per basis side by side (outputs concatenated), plus a bottleneck and a KAN
    head, so one export covers every basis; output block i belongs to BASIS_NAMES[i]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [KANConv2d(2, 2, 3, padding=1, basis=b, degree=2, norm_layer="batch", dropout=0.1) for b in BASIS_NAMES]
        )
        self.bottleneck = BottleneckKANConv2d(2, 2, 3, padding=1, basis="gram", noise_injection=0.1)
        self.head = KANLinear(2, 3, basis="chebyshev")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [conv(x).flatten(1) for conv in self.convs] + [self.bottleneck(x).flatten(1)]
        return torch.cat(ys + [self.head(x.mean((2, 3)))], 1)


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial parameters and BatchNorm statistics, so a wrong graph cannot match by accident."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def legacy_export(model: nn.Module, path, x: torch.Tensor, opset: int = 17):
    """torch.onnx.export as the tutorials call it: the legacy TorchScript exporter, dynamic batch, grad on."""
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def every_basis(tmp_path_factory):
    """The model and its ONNX files, by exporter: export_onnx (dynamo) and the legacy exporter at opset 17."""
    model = _randomize(EveryBasis())
    set_memory_efficient(model)  # training-only options must not leak into the graph
    model.train()
    folder = tmp_path_factory.mktemp("onnx")
    path = export_onnx(model, folder / "every_basis.onnx", input_size=INPUT)
    assert model.training, "export must restore the model's train/eval mode"
    legacy = legacy_export(model, folder / "every_basis_legacy.onnx", torch.randn(2, *INPUT))
    return model.eval(), {"dynamo": path, "legacy": legacy}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("index,basis", list(enumerate(BASIS_NAMES)))
def test_onnx_matches_pytorch_per_basis(every_basis, index, basis, exporter):
    model, paths = every_basis
    path = paths[exporter]
    x = torch.randn(5, *INPUT)  # neither the traced batch size nor the checked one
    with torch.no_grad():
        ref = model(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    block = slice(index * 72, (index + 1) * 72)  # 2 channels x 6 x 6 per basis
    scale = ref[:, block].abs().max()
    assert scale > 0
    assert (got[:, block] - ref[:, block]).abs().max() / scale < RTOL, basis
    if index == 0:  # the bottleneck and the KAN head, once
        assert (got[:, -75:] - ref[:, -75:]).abs().max() / ref[:, -75:].abs().max() < RTOL


def test_torch_export_of_every_basis():
    model = _randomize(EveryBasis()).eval()
    program = export_program(model, input_size=INPUT)
    x = torch.randn(4, *INPUT)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["kan_test_resnet_gram", "kan_test_densenet_wavelet", "kan_test_vgg_gram"])
def test_each_family_exports(tmp_path, name):
    import timm

    model = _randomize(timm.create_model(name, num_classes=4)).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx")  # dynamic batch: traced with 2, checked with 3
    assert check_onnx(model, path, batch_size=1) < RTOL
    program = export_program(model)
    x = torch.randn(3, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["kan_test_resnet_bspline", "kan_test_vgg_wavelet", "kan_unet_tiny_gram"])
def test_legacy_exporter_on_models(tmp_path, name):
    # The tutorials' torch.onnx.export(..., dynamo=False): it crashed (bspline's and the wavelet's C kernels)
    # or wrote wrong graphs (the fused nodes' writes, missing from the trace) before the layers ran their
    # plain ops under torch.jit.trace. Batch sizes 1 and 3 differ from the traced 2.
    import timm

    model = _randomize(timm.create_model(name, num_classes=4)).eval()
    path = legacy_export(model, tmp_path / f"{name}.onnx", torch.randn(2, *model.pretrained_cfg["input_size"]))
    for batch in (1, 3):
        assert check_onnx(model, path, batch_size=batch) < RTOL


def test_check_catches_a_graph_that_differs(tmp_path):
    model = nn.Sequential(KANConv2d(2, 3, 3, basis="rbf"), nn.Flatten())
    path = export_onnx(model, tmp_path / "m.onnx", input_size=INPUT)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1.0  # the file no longer computes what the model does
    with pytest.raises(ExportMismatchError, match="does not match PyTorch"):
        check_onnx(model, path, input_size=INPUT)


def test_clear_errors(tmp_path, monkeypatch):
    model = nn.Sequential(KANConv2d(2, 3, 3), nn.Flatten())
    with pytest.raises(ValueError, match=r"opset 17 is not supported.*dynamo=False, opset_version=17.*check_onnx"):
        export_onnx(model, tmp_path / "m.onnx", input_size=INPUT, opset=17)
    with pytest.raises(ValueError, match="pass input_size"):
        export_onnx(model, tmp_path / "m.onnx")

    class FixedBatch(nn.Module):
        def forward(self, x):
            return x.reshape(int(x.shape[0]), -1)

    with pytest.raises(ExportError, match="dynamic_batch=False"):
        export_program(FixedBatch(), input_size=INPUT)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install"):
        export_onnx(model, tmp_path / "m.onnx", input_size=INPUT)
