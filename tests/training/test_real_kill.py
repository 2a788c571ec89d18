"""SIGKILL a real training process at an arbitrary moment, resume it, get the uninterrupted weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kan_zoo.training.checkpoint import list_checkpoints
from kan_zoo.training.run import main

ROOT = Path(__file__).resolve().parents[2]


def _args(folder, out):
    return ["--dataset", str(folder), "--model", "test_resnet", "--img-size", "16", "--epochs", "5",
            "--batch-size", "4", "--grad-accum", "1", "--warmup-steps", "3", "--lr", "3e-3", "--workers", "0",
            "--drop-rate", "0.2", "--mixup", "0.3", "--checkpoint-steps", "1", "--keep-checkpoints", "2",
            "--no-progress", "--log-with", "none", "--output", str(out), "--cache-dir", str(out.parent / "hf_cache")]


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume(tiny_folder, tmp_path):
    full = tmp_path / "full"
    main(_args(tiny_folder, full))
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_imagenet.py"), *_args(tiny_folder, killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once a few updates are saved: wherever it lands (mid-update, mid-save, mid-validation)
    # the run must continue to the same end.
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "checkpoints").glob("step_*"))) >= 2 and (killed / "checkpoints").exists():
            break
        time.sleep(0.05)
    time.sleep(0.1)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list_checkpoints(killed), "no complete checkpoint survived the kill"

    main([*_args(tiny_folder, killed), "--resume"])
    last = list_checkpoints(full)[-1].name
    assert list_checkpoints(killed)[-1].name == last
    a = load_file(str(full / "checkpoints" / last / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / last / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
