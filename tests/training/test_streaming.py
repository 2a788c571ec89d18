"""--streaming: every process its own shard; a killed run resumes where its stream was, without reading
again what it trained on (torchdata's StatefulDataLoader, per-worker datasets state)."""
from __future__ import annotations

import json
from argparse import Namespace
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from kan_zoo.training.checkpoint import list_checkpoints
from kan_zoo.training.run import SimulatedKill, main


def _args(folder, out, *extra):
    # 37 files (one corrupt), batch 4: 9 batches per process and epoch; 2 epochs = 18 updates, passes go on
    return ["--dataset", str(folder), "--model", "test_resnet", "--img-size", "16", "--epochs", "2",
            "--batch-size", "4", "--grad-accum", "1", "--warmup-steps", "2", "--lr", "3e-3", "--streaming",
            "--train-samples", "37", "--checkpoint-steps", "5", "--keep-checkpoints", "1", "--log-with", "none",
            "--no-progress", "--model-ema-decay", "0.9", "--output", str(out),
            "--cache-dir", str(out.parent / "hf_cache"), "--record-samples", str(out.parent / f"{out.name}.ids"),
            *extra]


def _records(tmp_path, name):
    return [json.loads(line) for line in open(tmp_path / f"{name}.ids.0")]


def _trained(records):
    """(epoch, batch) -> ids, the last record winning: a killed run's updates after its checkpoint are redone."""
    return {(r["epoch"], r["batch"]): r for r in records}


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_stream_resumes_exactly_where_it_was(tiny_folder, tmp_path, workers, monkeypatch):
    extra = ["--workers", str(workers), "--shuffle-buffer", "1"]
    main(_args(tiny_folder, tmp_path / "full", *extra))
    with pytest.raises(SimulatedKill):
        main(_args(tiny_folder, tmp_path / "killed", *extra, "--crash-after-steps", "12"))
    ckpt = list_checkpoints(tmp_path / "killed")[-1]
    assert ckpt.name == "step_000000010"  # epoch 2, batch 1: mid-epoch and mid-pass (a pass is 36 good rows)
    position = json.loads((ckpt / "stream_state_0.json").read_text())
    assert position["pass"] == 1 and position["loader"]
    before = len(_records(tmp_path, "killed"))
    decoded = Counter()
    if workers == 0:  # rows are decoded in this process: count the training rows
        from kan_zoo.training.images import RowSampler

        process = RowSampler.process

        def counting(self, row, index):
            decoded.update(["train" if "/train/" in row["image"]["path"] else "validation"])
            return process(self, row, index)

        monkeypatch.setattr(RowSampler, "process", counting)
    main(_args(tiny_folder, tmp_path / "killed", *extra, "--resume"))
    full = _trained(_records(tmp_path, "full"))
    resumed = _trained(_records(tmp_path, "killed"))
    assert resumed == full  # the same samples in the same batches, before and after the kill
    assert len(full) == 18
    if workers == 0:
        # the resume read the 8 remaining batches' rows (32 or 33 with the corrupt one), not the 10 done before
        assert 32 <= decoded["train"] <= 33
    after = _records(tmp_path, "killed")[before:]
    assert [(r["epoch"], r["batch"]) for r in after] == [(1, b) for b in range(2, 10)]
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / "step_000000018" / name))
        b = load_file(str(tmp_path / "killed" / "checkpoints" / "step_000000018" / name))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_shuffled_stream_resume_skips_the_buffer_instead_of_repeating(tiny_folder, tmp_path, capsys):
    extra = ["--workers", "0", "--shuffle-buffer", "6"]
    with pytest.raises(SimulatedKill):
        main(_args(tiny_folder, tmp_path / "killed", *extra, "--crash-after-steps", "6"))
    trained_before = [i for r in _records(tmp_path, "killed") if (r["epoch"], r["batch"]) <= (0, 5)
                      for i in r["ids"]]
    assert 19 <= len(trained_before) <= 20  # 5 updates of 4 rows before the checkpoint, one may be the corrupt file
    n_before = len(_records(tmp_path, "killed"))
    main(_args(tiny_folder, tmp_path / "killed", *extra, "--resume"))
    assert "warning: resuming a shuffled stream" in capsys.readouterr().out
    after = _records(tmp_path, "killed")[n_before:]
    assert len(after) == 13  # the run still ends after its 18 updates
    rest_of_pass = [i for r in after if r["pass"] == 0 for i in r["ids"]]
    assert not set(rest_of_pass) & set(trained_before)  # nothing trained on is read again in that pass
    assert len(rest_of_pass) + len(trained_before) < 36  # the rows that sat in the buffer were skipped
    assert any(r["pass"] == 1 for r in after)


def test_each_process_streams_its_own_files(tiny_folder, tmp_path):
    import datasets

    from kan_zoo.training.data import load_data
    from kan_zoo.training.images import build_transforms
    from kan_zoo.training.streaming import build_streaming_loaders

    ds = datasets.load_dataset("imagefolder", data_dir=str(tiny_folder), cache_dir=str(tmp_path / "c"))
    ds = ds.cast_column("image", datasets.Image(decode=False))
    root = tmp_path / "pq"
    root.mkdir()
    for split, part in ds.items():
        for k in range(4):  # four files per split: two each for two processes
            part.shard(4, k, contiguous=True).to_parquet(str(root / f"{split}-{k:05d}-of-00004.parquet"))
    args = Namespace(dataset=str(root), dataset_config=None, data_format="auto", train_split="train",
                     val_split="validation", image_column="image", label_column="label", num_classes=None,
                     in_chans=None, streaming=True, shuffle_buffer=0, train_samples=37, cache_dir=str(tmp_path / "c"),
                     workers=0, seed=0, batch_size=4, val_batch_size=4, grad_accum=1, img_size=8, mean=None,
                     std=None, crop_pct=None, interpolation=None, scale=(0.08, 1.0), ratio=(0.75, 1.33), hflip=0.5,
                     color_jitter=0.0, auto_augment=None, reprob=0.0)
    import timm

    eval_tf = build_transforms(args, timm.create_model("test_resnet", num_classes=3), 3)[1]
    seen, ids = [], []
    for rank in (0, 1):
        data = load_data(args)
        acc = Namespace(process_index=rank, num_processes=2, device=torch.device("cpu"))
        train_ds, loader, _, batches = build_streaming_loaders(args, acc, data, eval_tf, eval_tf, (3, 8, 8), False)
        assert "each reads its own 2 of the 4 files" in data.label_note
        if rank == 0:
            ids = [i for b in loader.epoch() for i in b["ids"]]
        train_ds.set_epoch(0)
        seen.append([s.id for s in train_ds])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 37
    assert len(ids) == 4 * batches and set(ids) <= set(seen[0])  # the training loader reads that shard
