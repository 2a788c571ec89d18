"""A run stopped mid-epoch (like a kill) and resumed ends with exactly the uninterrupted weights."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from kan_zoo.training.checkpoint import list_checkpoints
from kan_zoo.training.run import Preempted, SimulatedKill, main
from accelerate.state import AcceleratorState, GradientState, PartialState


def _reset():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _args(folder, out, *extra):
    # Random crops, flips, mixup, dropout, EMA and accumulation all on: every RNG use must replay.
    return ["--dataset", str(folder), "--model", "test_resnet", "--img-size", "16", "--epochs", "2",
            "--batch-size", "4", "--grad-accum", "2", "--warmup-steps", "3", "--lr", "3e-3", "--workers", "0",
            "--mixup", "0.4", "--cutmix", "0.4", "--drop-rate", "0.2", "--model-ema-decay", "0.9",
            "--checkpoint-steps", "2", "--keep-checkpoints", "2", "--log-every", "1", "--no-progress",
            "--output", str(out), "--cache-dir", str(out.parent / "hf_cache"), *extra]


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("mode", ["map", "streaming", "sigterm"])
def test_killed_and_resumed_run_matches_uninterrupted(tiny_folder, tmp_path, mode):
    # a local folder streamed has no split sizes unless datasets built it before: give the count
    # streamed: files shuffled per pass, no row buffer (datasets cannot save one): an exact resume
    extra = ["--streaming", "--shuffle-buffer", "1", "--train-samples", "37"] if mode == "streaming" else []
    full = main(_args(tiny_folder, tmp_path / "full", *extra))
    _reset()
    # 37 files (one corrupt) / batch 4: map-style 9 batches = 5 updates per epoch, streamed 8 = 4.
    # Kill: stop at update 7, mid-epoch 2, one update after the last checkpoint (update 6): that
    # update is lost and must be replayed identically. SIGTERM at update 7: saved there, then stop.
    if mode == "sigterm":
        with pytest.raises(Preempted, match="checkpoint saved at update 7"):
            main(_args(tiny_folder, tmp_path / "killed", "--signal-after-steps", "7"))
    else:
        with pytest.raises(SimulatedKill):
            main(_args(tiny_folder, tmp_path / "killed", "--crash-after-steps", "7", *extra))
    kept = list_checkpoints(tmp_path / "killed")
    assert len(kept) == 2 and kept[-1].name == ("step_000000007" if mode == "sigterm" else "step_000000006")
    state = json.loads((kept[-1] / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and state["batch_in_epoch"] > 0
    _reset()
    resumed = main(_args(tiny_folder, tmp_path / "killed", "--resume", *extra))

    last = list_checkpoints(tmp_path / "full")[-1].name
    assert last == list_checkpoints(tmp_path / "killed")[-1].name
    a = _weights(tmp_path / "full" / "checkpoints" / last)
    b = _weights(tmp_path / "killed" / "checkpoints" / last)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    ea = load_file(str(tmp_path / "full" / "checkpoints" / last / "ema.safetensors"))
    eb = load_file(str(tmp_path / "killed" / "checkpoints" / last / "ema.safetensors"))
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=1e-6, msg=k)
    assert resumed["metrics"]["val/top1"] == pytest.approx(full["metrics"]["val/top1"])
    # The resumed run's log holds each update once, like the uninterrupted one's.
    def steps(run):
        rows = list(csv.DictReader(open(tmp_path / run / "logs" / "train" / "metrics.csv")))
        return [(r["step"], bool(r.get("train/loss")), bool(r.get("val/top1"))) for r in rows]
    assert steps("killed") == steps("full")
    # The unreadable file is counted once (files, not encounters: it was met in both epochs).
    assert resumed["metrics"]["train/unreadable_images"] == full["metrics"]["train/unreadable_images"] == 1
