"""Deployment: torch.export and ONNX export of kan_zoo models, checked against PyTorch.

    from kan_zoo.export import export_onnx, export_program
    export_onnx(model, "model.onnx")          # opset 18, dynamic batch, onnxruntime-checked
    program = export_program(model)           # a torch.export.ExportedProgram

Both trace the model in eval mode under ``torch.no_grad()`` (a deployed model runs inference:
BatchNorm uses its running statistics, dropout and noise injection are off, and the KAN layers take
their plain path rather than the fused training kernel), then restore the model's mode.

Why the dynamo-based ONNX exporter (torch.onnx.export(dynamo=True), torch 2.14's default) and opset
>= 18: it implements opset 18 and newer only (asked for 17 it converts down and may silently keep
18). Wrong graphs are what ``check=True`` exists to catch: it runs onnxruntime on a batch of a size
other than the one traced and compares with PyTorch, raising :class:`ExportMismatchError` beyond ``rtol``.

The legacy TorchScript-based exporter, ``torch.onnx.export(model.eval(), (x,), f, dynamo=False,
opset_version=..., dynamic_axes=...)``, works too and reaches opsets below 18: under ``torch.jit.trace``
the KAN layers run their plain ops (no fused node or C kernel, which a trace cannot record), and no
KAN layer fixes the batch size. It does fix the segmentation nets' H x W (their padding is computed
from the traced size). Check such a file with :func:`check_onnx`.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

__all__ = [
    "ExportError", "ExportMismatchError", "MIN_OPSET", "export_program", "export_onnx", "check_onnx",
    "example_input",
]

MIN_OPSET = 18
_TRACE_BATCH = 2  # traced with 2 and checked with 3: a batch size baked into the graph shows up
_CHECK_BATCH = 3


class ExportError(RuntimeError):
    """The model cannot be exported as asked (the message says why and what to change)."""


class ExportMismatchError(ExportError):
    """The exported graph runs but does not compute what the PyTorch model computes."""


def example_input(model: nn.Module, input_size: Optional[Sequence[int]] = None, batch: int = _TRACE_BATCH,
                  seed: int = 0) -> torch.Tensor:
    """A random (batch, *input_size) input on the model's device and dtype.

    ``input_size`` defaults to the model's timm ``pretrained_cfg['input_size']`` (C, H, W).
    """
    if input_size is None:
        input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if input_size is None:
            raise ValueError(f"{type(model).__name__} has no pretrained_cfg['input_size']; pass input_size=(C, H, W)")
    p = next(iter(model.parameters()), None)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_size), generator=g)
    return x.to(device=p.device, dtype=p.dtype) if p is not None else x


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[nn.Module]:
    """eval() + no_grad for the duration, then the model's own train/eval state is restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def _trace(model: nn.Module, x: torch.Tensor, dynamic_batch: bool) -> "torch.export.ExportedProgram":
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        return torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes, strict=False)
    except torch._dynamo.exc.UserError as e:  # noqa: SLF001  (the public home of this error)
        if dynamic_batch and "specialized it to be a constant" in str(e):
            raise ExportError(
                f"{type(model).__name__} fixes the batch size while tracing (its code turns x.shape[0] into a "
                f"Python number, e.g. int(x.shape[0])), so no graph for any batch size exists. Export with "
                f"dynamic_batch=False to get a graph for batch size {x.shape[0]} only, or fix the model code."
                f"\ntorch.export said: {str(e).splitlines()[0]}"
            ) from e
        raise ExportError(f"torch.export cannot trace {type(model).__name__}: {e}") from e
    except Exception as e:
        raise ExportError(f"torch.export cannot trace {type(model).__name__}: {type(e).__name__}: {e}") from e


def export_program(
    model: nn.Module,
    *,
    input_size: Optional[Sequence[int]] = None,
    dynamic_batch: bool = True,
    batch_size: int = _TRACE_BATCH,
) -> "torch.export.ExportedProgram":
    """``torch.export.export`` of the model for inference (eval mode, no grad), batch dimension dynamic.

    Run it with ``program.module()(x)``. ``input_size`` as in :func:`example_input`.
    """
    x = example_input(model, input_size, batch_size)
    with _inference(model):
        return _trace(model, x, dynamic_batch)


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}: pip install onnx onnxscript onnxruntime "
            "(or pip install 'kan_zoo[export]')"
        )


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    *,
    input_size: Optional[Sequence[int]] = None,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = True,
    check: bool = True,
    rtol: float = 1e-4,
) -> Path:
    """Writes the model as ONNX to ``path`` (one file; weights beside it only past 2 GB) and returns the path.

    The graph's input is ``input`` (N, *input_size), its output ``output``; N is dynamic unless
    ``dynamic_batch=False``. With ``check`` (default) onnxruntime runs it and the result must match
    PyTorch within ``rtol`` (see :func:`check_onnx`), or :class:`ExportMismatchError` is raised.
    """
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is not supported: torch {torch.__version__.split('+')[0]}'s ONNX exporter implements "
            f"opset {MIN_OPSET} and newer; use opset >= {MIN_OPSET}, or for an older opset the legacy exporter, "
            f"torch.onnx.export(model.eval(), (x,), path, dynamo=False, opset_version={opset}, "
            f"input_names=['input'], output_names=['output'], dynamic_axes={{'input': {{0: 'batch'}}, "
            f"'output': {{0: 'batch'}}}}), and check the file with "
            f"kan_zoo.export.check_onnx(model, path)"
        )
    _require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = example_input(model, input_size, _TRACE_BATCH)
    with _inference(model):
        program = _trace(model, x, dynamic_batch)
        try:
            onnx_program = torch.onnx.export(
                program, (x,), None, dynamo=True, opset_version=opset, input_names=["input"],
                output_names=["output"], verbose=False,
            )
        except Exception as e:
            raise ExportError(
                f"the ONNX exporter cannot translate {type(model).__name__} at opset {opset}: "
                f"{type(e).__name__}: {str(e)[:2000]}"
            ) from e
    onnx_program.save(str(path), external_data=False)  # auto: a separate weights file only past 2 GB
    if check:
        check_onnx(model, path, input_size=input_size, batch_size=_CHECK_BATCH if dynamic_batch else _TRACE_BATCH,
                   rtol=rtol)
    return path


def check_onnx(
    model: nn.Module,
    path: Union[str, Path],
    *,
    input_size: Optional[Sequence[int]] = None,
    batch_size: int = _CHECK_BATCH,
    rtol: float = 1e-4,
    seed: int = 1,
) -> float:
    """Runs the ONNX file with onnxruntime (CPU) and PyTorch on the same random input.

    Returns the relative error max|onnx - torch| / max|torch| (relative to the output's scale, since
    elementwise ratios explode on outputs near 0); raises ExportMismatchError above ``rtol``.
    """
    _require_onnx()
    import numpy as np
    import onnxruntime as ort

    x = example_input(model, input_size, batch_size, seed=seed)
    with _inference(model):
        ref = model(x).float().cpu().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}
    try:
        got = session.run(None, feed)[0]
    except Exception as e:  # e.g. a shape baked into the graph
        raise ExportMismatchError(f"onnxruntime cannot run {path} on a batch of {batch_size}: {e}") from e
    if got.shape != ref.shape:
        raise ExportMismatchError(f"{path}: onnxruntime output shape {got.shape} != PyTorch {ref.shape}")
    err = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    if not np.isfinite(err) or err > rtol:
        raise ExportMismatchError(
            f"{path} does not match PyTorch: relative error {err:.3g} > {rtol:g} (batch {batch_size}); "
            "do not deploy this graph"
        )
    return err


def _main() -> None:
    """python -m kan_zoo.export MODEL OUT.onnx: export and report the error and time (a quick check)."""
    import argparse

    from .viz import load_model

    p = argparse.ArgumentParser(prog="python -m kan_zoo.export", description=_main.__doc__)
    p.add_argument("model", help="timm model name, hf-hub:/local-dir: name or exported folder")
    p.add_argument("out")
    p.add_argument("--input-size", type=int, nargs="+")
    p.add_argument("--opset", type=int, default=MIN_OPSET)
    p.add_argument("--static-batch", action="store_true")
    a = p.parse_args()
    model = load_model(a.model)
    start = time.perf_counter()
    out = export_onnx(model, a.out, input_size=a.input_size, opset=a.opset, dynamic_batch=not a.static_batch,
                      check=False)
    took = time.perf_counter() - start
    err = check_onnx(model, out, input_size=a.input_size, batch_size=_TRACE_BATCH if a.static_batch else _CHECK_BATCH)
    print(f"wrote {out} in {took:.1f}s; onnxruntime vs PyTorch relative error {err:.2e}")


if __name__ == "__main__":
    _main()
