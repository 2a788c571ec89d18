"""Metric logging through accelerate's trackers, with a CSV tracker that needs no extra package."""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List, Optional, Union

from accelerate.tracking import GeneralTracker, on_main_process

from .config import ConfigError

__all__ = ["CSVTracker", "build_trackers"]


class CSVTracker(GeneralTracker):
    """Appends one row per log call to ``<dir>/metrics.csv``; new metric names widen the file."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: Union[str, os.PathLike]):
        # Touches nothing: it runs on every process, before the Accelerator exists.
        super().__init__()
        self.dir = os.path.join(logging_dir, run_name)
        self.path = os.path.join(self.dir, "metrics.csv")
        self.fields: List[str] = []
        self.rows: List[Dict[str, Any]] = []

    @property
    def tracker(self) -> "CSVTracker":
        return self

    @on_main_process
    def store_init_configuration(self, values: Dict[str, Any]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        if os.path.exists(self.path):  # resumed run: keep what was logged before
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self.rows = list(reader)
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(values, f, indent=1, default=str)

    @on_main_process
    def drop_after(self, step: int) -> None:
        """A resumed run replays the updates after its checkpoint: forget what they logged before."""
        keep = [r for r in self.rows if r.get("step") in (None, "") or int(float(r["step"])) <= step]
        if len(keep) != len(self.rows):
            self.rows = keep
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    @on_main_process
    def log(self, values: Dict[str, Any], step: Optional[int] = None, **kwargs: Any) -> None:
        row = {"step": step, **{k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}}
        new = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new:  # rewrite with the wider header (rare: only when a metric first appears)
            self.fields += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(row)

    @on_main_process
    def finish(self) -> None:
        pass


def build_trackers(spec: str, logging_dir: str, run_name: str) -> List[Any]:
    """'csv,tensorboard' -> log_with list for Accelerator; 'none' -> []."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    out: List[Any] = []
    for name in (s.strip().lower() for s in spec.split(",")):
        if not name or name == "none":
            continue
        if name == "csv":
            out.append(CSVTracker(run_name, logging_dir))
        elif name not in LOGGER_TYPE_TO_CLASS:
            choices = ", ".join(["csv", *LOGGER_TYPE_TO_CLASS])
            raise ConfigError(f"--log-with: unknown tracker {name!r}; choose from {choices}")
        elif name not in available:
            # accelerate would drop it silently: say so before the run, not after days without logs
            raise ConfigError(f"--log-with {name}: the {name} package is not installed (pip install {name})")
        else:
            out.append(name)
    return out
