"""Early errors that every process agrees on, so a multi-process launch fails with one readable line.

Under ``accelerate launch --num_processes N`` a check that fails on one process only (a dataset the
main process could not read, a file missing on one node) used to leave the others blocked in the
next collective until the launcher killed them, each printing its own "Connection closed by peer"
traceback. Setup is therefore split into stages with no collective inside; at the end of each
stage every process calls :func:`agree` with the error it met (or None). If any process failed,
all of them raise: the failing ones their own error, the others a :class:`PeerError` carrying the
first error's message. The entry point prints ``error: <message>`` on the main process only and
every process exits with status 2.
"""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, TypeVar

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError
from .modeling import ModelError

__all__ = ["USER_ERRORS", "PeerError", "agree", "guarded", "main_process_first", "is_main_process", "exit_on_error"]

USER_ERRORS = (ConfigError, DataError, ModelError, CheckpointError)  # bad input: one line, no traceback
T = TypeVar("T")


class PeerError(RuntimeError):
    """Another process failed during setup; ``str()`` is the message the main process prints."""


def is_main_process() -> bool:
    """Global rank 0 (from the launcher's environment: usable before the Accelerator exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def _describe(error: BaseException) -> str:
    if isinstance(error, USER_ERRORS):
        return str(error)
    return f"{type(error).__name__}: {error}"


def agree(accelerator: Any, error: Optional[BaseException]) -> None:
    """Collective: raises on every process if ``error`` is set on any of them (see the module doc)."""
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return
    from accelerate.utils import gather_object

    reports: List[Any] = gather_object([None if error is None else (type(error).__name__, _describe(error),
                                                                   isinstance(error, USER_ERRORS))])
    failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
    if not failed:
        return
    if error is None:
        rank, (_, message, user_error) = failed[0]
        error = PeerError(message if user_error else f"process {rank} failed during setup: {message} (its "
                                                     f"traceback is above)")
    # Every process is on its way out. Where all failures are user errors, every process leaves
    # through exit_on_error, which may then wait for the others (a traceback leaves at once).
    error.agreed = all(user for _, (_, _, user) in failed)
    raise error


@contextmanager
def guarded(accelerator: Any) -> Iterator[None]:
    """``with guarded(acc): ...`` runs a stage (no collectives inside), then :func:`agree` on its outcome."""
    try:
        yield
    except Exception as e:  # noqa: BLE001  re-raised by agree(), on this process and (as PeerError) the others
        agree(accelerator, e)
        raise  # agree() always raises for a set error; this line only satisfies the type checker
    agree(accelerator, None)


def main_process_first(accelerator: Any, fn: Callable[[], T]) -> T:
    """``fn()`` on the main process, then on the others (it fills the caches they read); agreed errors.

    Like ``accelerator.main_process_first()``, but a failure on the main process stops the others
    before they repeat it, instead of leaving them waiting at a barrier it never reaches.
    """
    result: Any = None
    if accelerator.is_main_process:
        with guarded(accelerator):
            result = fn()
        with guarded(accelerator):
            pass
    else:
        with guarded(accelerator):
            pass
        with guarded(accelerator):
            result = fn()
    return result


def exit_on_error(error: BaseException) -> None:
    """What the entry point does with a user error or PeerError: one line from the main process, status 2."""
    # The launcher sends SIGTERM to whoever is still running once one process has exited: finish
    # leaving with our own status instead of being reported as killed.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if is_main_process():
        print(f"error: {error}", file=sys.stderr, flush=True)
    if getattr(error, "agreed", False):
        # Leave together: a process that is still printing when another has exited is sent SIGTERM
        # by the launcher, which then reports that signal too.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    sys.exit(2)
