"""End to end: `accelerate launch` with two CPU processes (gloo), export, reload through timm."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, tmp_path, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "hf_cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(ROOT / "train_imagenet.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _eval_exported(folder: Path, data: Path) -> float:
    """Top-1 of the exported model on the validation images, preprocessing read from its config."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    tf = create_transform(**resolve_data_config(model=model))
    names = json.loads((folder / "config.json").read_text())["label_names"]
    hits = total = 0
    with torch.no_grad():
        for label, name in enumerate(names):
            for f in sorted((data / "validation" / name).iterdir()):
                x = tf(Image.open(f).convert("RGB"))[None]
                hits += int(model(x).argmax(1).item() == label)
                total += 1
    return 100.0 * hits / total


@pytest.mark.slow
@pytest.mark.xdist_group("train_launch")
def test_two_process_cpu_launch_end_to_end(tiny_folder, tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", str(tiny_folder), "--model", "test_resnet", "--img-size", "16", "--epochs", "2",
            "--batch-size", "4", "--val-batch-size", "4", "--grad-accum", "1", "--warmup-steps", "2",
            "--lr", "3e-3", "--workers", "0", "--checkpoint-steps", "2", "--keep-checkpoints", "2",
            "--log-every", "1", "--output", str(out)]
    proc = _launch(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "2 process(es)" in proc.stdout

    rows = list(csv.DictReader(open(out / "logs" / "train" / "metrics.csv")))
    val_rows = [r for r in rows if r.get("val/count")]
    assert len(val_rows) == 2
    # 15 validation images over 2 processes x batch 4: the padding is gathered but never counted
    assert {int(float(r["val/count"])) for r in val_rows} == {15}
    assert any(r.get("train/loss") for r in rows)
    # 36 readable training images / (2 x 4) -> 4 updates per epoch; kept: the last two checkpoints
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000006", "step_000000008"]
    assert not list((out / "checkpoints").glob(".tmp-*"))

    export = out / "export"
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in export.iterdir()}
    config = json.loads((export / "config.json").read_text())
    assert config["num_classes"] == 3 and config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert "num_classes" not in config.get("model_args", {})
    card = (export / "README.md").read_text()
    measured = json.loads((export / "metrics.json").read_text())
    prefix = "val_ema" if measured["weights"] == "ema" else "val"
    assert measured["top1"] == pytest.approx(float(val_rows[-1][f"{prefix}/top1"]))
    assert "top-1 accuracy (%), validation" in card and "top-5 accuracy (%), validation" in card
    # the reloaded model reproduces the measured accuracy
    assert _eval_exported(export, tiny_folder) == pytest.approx(measured["top1"], abs=1e-6)
