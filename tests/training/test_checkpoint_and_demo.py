"""Checkpoint bookkeeping and the demo's data split, without training."""
from __future__ import annotations

import json

import pytest

from kan_zoo.training.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, resolve_resume


def _fake(root, name, complete=True):
    d = root / "checkpoints" / name
    d.mkdir(parents=True)
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    return d


def test_resume_picks_latest_complete_checkpoint(tmp_path):
    assert resolve_resume("latest", tmp_path) is None  # nothing yet: fresh start
    _fake(tmp_path, "step_000000002")
    _fake(tmp_path, "step_000000010")
    _fake(tmp_path, ".tmp-step_000000012")  # a save interrupted by a kill
    _fake(tmp_path, "step_000000011", complete=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002", "step_000000010"]
    assert latest_checkpoint(tmp_path).name == "step_000000010"
    assert resolve_resume("latest", tmp_path).name == "step_000000010"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / "step_000000011"), tmp_path)


def test_digits_folder_split(tmp_path):
    from kan_zoo.demo import write_digits_folder

    root = write_digits_folder(tmp_path / "digits", seed=0)
    files = {s: sorted(p.name for p in (root / s).rglob("*.png")) for s in ("train", "validation", "test")}
    assert sum(map(len, files.values())) == 1797  # every digit once
    assert not (set(files["train"]) & set(files["test"])) and not (set(files["train"]) & set(files["validation"]))
    assert len(files["test"]) == 360
    for split in files:
        assert sorted(p.name for p in (root / split).iterdir()) == [str(d) for d in range(10)]


def test_kill_while_replacing_a_same_step_checkpoint_is_recovered(tmp_path):
    _fake(tmp_path, "step_000000004")
    old = _fake(tmp_path, ".old-step_000000008")  # moved aside, the new copy never renamed in
    _fake(tmp_path, ".tmp-step_000000008")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000004", "step_000000008"]
    assert not old.exists()
