"""The errors kan_zoo raises about checkpoints and the Hub; each message names the file (and repo) it is about.

kan_zoo.hub exports them. They live apart from it so that the models and converters that raise them while
loading pretrained weights do not import the hub, which imports the models."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

__all__ = ["HubError", "CorruptCheckpointError", "CheckpointMismatchError", "HubFileNotCachedError",
           "UnknownModelError"]

_SHOWN = 10  # names listed per category before "... and N more", so huge state dicts stay readable


def _name_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    more = len(names) - _SHOWN
    return shown + (f", ... and {more} more" if more > 0 else "")


class HubError(Exception):
    """Base class of the errors kan_zoo.hub raises itself."""


class CorruptCheckpointError(HubError, ValueError):
    """A weights/config file exists but cannot be parsed."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path} is not a valid {self._kind()} file ({reason}); "
                         f"it may be truncated or corrupt - re-download or re-export it")

    def _kind(self) -> str:
        return "safetensors" if self.path.suffix == ".safetensors" else self.path.suffix.lstrip(".") or "checkpoint"


class CheckpointMismatchError(HubError, RuntimeError):
    """A checkpoint's tensors do not match the model's state dict (names or shapes)."""

    def __init__(
        self,
        path: str | Path,
        missing_keys: Sequence[str],
        unexpected_keys: Sequence[str],
        shape_mismatches: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = (),
        model_name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.shape_mismatches = list(shape_mismatches)
        target = f"model {model_name!r}" if model_name else "the model"
        lines = [f"checkpoint {self.path} does not match {target}:"]
        if self.missing_keys:
            lines.append(f"  missing keys ({len(self.missing_keys)}): {_name_list(self.missing_keys)}")
        if self.unexpected_keys:
            lines.append(f"  unexpected keys ({len(self.unexpected_keys)}): {_name_list(self.unexpected_keys)}")
        if self.shape_mismatches:
            shapes = [f"{k} (checkpoint {tuple(c)} vs model {tuple(m)})" for k, c, m in self.shape_mismatches]
            lines.append(f"  shape mismatches ({len(shapes)}): {_name_list(shapes)}")
        lines.append("  (was it saved from a different architecture, or with other num_classes / model args?)")
        super().__init__("\n".join(lines))


class HubFileNotCachedError(HubError, FileNotFoundError):
    """Offline (or unreachable Hub) and the requested repo file is not in the local cache."""

    def __init__(self, repo_id: str, filename: str, cache_dir: str | Path, offline: bool) -> None:
        self.repo_id, self.filename, self.cache_dir = repo_id, filename, Path(cache_dir)
        why = ("downloads are disabled (HF_HUB_OFFLINE=1)" if offline
               else "the Hub could not be reached")
        self.message = (
            f"{filename!r} of Hugging Face repo {repo_id!r} is not in the local cache ({self.cache_dir}) "
            f"and {why}; download it once with network access (e.g. `hf download {repo_id}`) "
            f"or point HF_HUB_CACHE at a cache that holds it")
        super().__init__(self.message)

    def __str__(self) -> str:
        # OSError formats itself from errno/filename fields otherwise ("[Errno None] ...")
        return self.message


class UnknownModelError(HubError, ValueError):
    """timm has no architecture of that name (after importing kan_zoo)."""

    def __init__(self, model_name: str, close_matches: Sequence[str] = (), origin: str | None = None) -> None:
        self.model_name = model_name
        where = f" (the architecture named by {origin}'s config.json)" if origin else ""
        hint = f" Close matches: {', '.join(close_matches)}." if close_matches else ""
        super().__init__(
            f"unknown model {model_name!r}{where}: timm has no architecture of that name.{hint} "
            f"List the kan_zoo models with `timm.list_models('kan_*')` (after `import kan_zoo`).")
