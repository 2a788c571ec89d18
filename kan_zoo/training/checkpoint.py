"""Atomic, rotated checkpoints on top of accelerator.save_state.

A checkpoint is written into a hidden temporary folder and renamed into place only after every
process has finished writing, so a kill at any moment leaves either the previous checkpoint set or
a complete new one, never a half-written folder that --resume would pick. Our own state (position
in the run, EMA weights) is stored as JSON and safetensors rather than pickles, so loading a
checkpoint never unpickles anything.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch

__all__ = ["TrainState", "CheckpointError", "list_checkpoints", "latest_checkpoint", "save_checkpoint",
           "load_checkpoint", "resolve_resume"]

_NAME = re.compile(r"^step_(\d{9})$")
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


class CheckpointError(ValueError):
    pass


@dataclass
class TrainState:
    """Where the run is: enough to continue exactly where a checkpoint was taken."""

    global_step: int = 0  # optimizer updates done
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # training batches of this epoch consumed
    skipped_images: int = 0  # unreadable training image files so far, all processes
    model: str = ""
    # what batch_in_epoch counts in: a resume with another layout converts the position
    num_processes: int = 1
    batch_size: int = 0
    label_names: Optional[List[str]] = None  # the class list trained on: a resume must see the same one
    bad_train: List[str] = field(default_factory=list)  # keys of the unreadable files named so far
    bad_val: List[str] = field(default_factory=list)


def _ckpt_dir(root: Path) -> Path:
    return root / "checkpoints"


def _recover_replaced(root: Path) -> None:
    """Undo a kill between the two renames that replace a same-step checkpoint (see save_checkpoint)."""
    for old in root.glob(".old-step_*"):
        final = root / old.name[len(".old-"):]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def list_checkpoints(output_dir: Union[str, Path]) -> List[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    root = _ckpt_dir(Path(output_dir))
    if not root.is_dir():
        return []
    try:
        _recover_replaced(root)
    except OSError:
        pass  # another process got there first
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(output_dir: Union[str, Path]) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: Optional[str], output_dir: Union[str, Path]) -> Optional[Path]:
    """--resume value to a checkpoint folder; 'latest' with nothing saved yet starts from scratch."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume!r} is not a complete checkpoint folder (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator: Any, output_dir: Union[str, Path], state: TrainState,
                    ema: Optional[torch.nn.Module], keep: int, extra_files: Optional[Dict[str, str]] = None,
                    per_process: Optional[Callable[[Path], None]] = None) -> Path:
    """Collective: every process must call it. Returns the final folder.

    ``extra_files``: {file name: text} written next to the state by the main process (grid state);
    ``per_process(folder)``: run by every process, to write its own files (a stream's position).
    The folder is on storage every process sees (checked at startup with several processes): the
    main process alone creates, renames and rotates, so that two machines never race on it.
    """
    from safetensors.torch import save_file

    root = _ckpt_dir(Path(output_dir))
    final = root / f"step_{state.global_step:09d}"
    tmp = root / f".tmp-step_{state.global_step:09d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a kill during an earlier save
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if per_process is not None:
        per_process(tmp)
    if accelerator.is_main_process:
        if ema is not None:
            # EMA buffers may share storage with nothing else; clone keeps safetensors happy.
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in ema.state_dict().items()},
                      str(tmp / EMA_FILE))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Same step saved twice (a step checkpoint on the epoch's last update, then the epoch-end
        # one): move the old one aside rather than delete it, so a kill between the renames still
        # leaves a complete checkpoint (list_checkpoints puts it back).
        old = root / f".old-{final.name}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(root)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(accelerator: Any, path: Union[str, Path], model: torch.nn.Module,
                    ema: Optional[torch.nn.Module], model_name: str) -> TrainState:
    """Restores model, optimizer, RNG states (accelerate) and EMA; returns the run position."""
    from safetensors.torch import load_file

    path = Path(path)
    raw = json.loads((path / STATE_FILE).read_text())
    state = TrainState(**{k: raw[k] for k in TrainState.__dataclass_fields__ if k in raw})
    if state.model and state.model != model_name:
        raise CheckpointError(f"checkpoint {str(path)!r} was trained with --model {state.model!r}, not {model_name!r}")
    accelerator.load_state(str(path))
    if ema is not None:
        ema_file = path / EMA_FILE
        if ema_file.is_file():
            ema.load_state_dict(load_file(str(ema_file)))
        else:  # checkpoint from a run without EMA: start the average from the restored weights
            ema.module.load_state_dict(accelerator.unwrap_model(model).state_dict())
    return state
