"""Unreadable images of one split: each file named once, counted once, across processes, epochs and resumes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from .images import BadImage

__all__ = ["UnreadableImages"]

_NAMED_PER_SYNC = 20  # more than that in one go: the rest only in OUTPUT/unreadable_images.txt


class UnreadableImages:
    """Collects the BadImage records of batches; :meth:`sync` (collective) merges every process's."""

    def __init__(self, split: str, what: str, known: Iterable[str] = (), report: Optional[Path] = None):
        self.split, self.what, self.report = split, what, report
        self.known = set(known)  # keys of the files already named (kept in checkpoints)
        self._pending: Dict[str, BadImage] = {}

    def add(self, bad: Iterable[BadImage]) -> None:
        for b in bad:
            if b.key not in self.known:
                self._pending.setdefault(b.key, b)

    @property
    def count(self) -> int:
        return len(self.known)

    def sync(self, accelerator: Any) -> List[BadImage]:
        """Collective: every process learns the files found anywhere; the main process names the new ones."""
        mine = list(self._pending.values())
        self._pending.clear()
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            mine = gather_object(mine)
        new = sorted({b.key: b for b in mine if b.key not in self.known}.values(), key=lambda b: b.key)
        self.known.update(b.key for b in new)
        if new and accelerator.is_main_process:
            for b in new[:_NAMED_PER_SYNC]:
                print(f"warning: unreadable {self.what} image skipped: {b.name} ({b.reason})", flush=True)
            more = len(new) - _NAMED_PER_SYNC
            if self.report is not None:
                self.report.parent.mkdir(parents=True, exist_ok=True)
                with open(self.report, "a") as f:
                    f.writelines(f"{self.split}\t{b.name}\t{b.reason}\n" for b in new)
            if more > 0:
                print(f"warning: {more} more unreadable {self.what} images, listed in {self.report}", flush=True)
        return new
