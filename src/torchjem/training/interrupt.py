"""Interruption is a checkpoint, not a loss. While a run trains, SIGINT (Ctrl-C) and SIGTERM (what
SLURM and Kubernetes send before they kill) only set a flag: the loop finishes the step it is in,
writes last.pt at the current batch and raises ``errors.Interrupted`` naming the resume command.
A second signal while that happens is logged and ignored. Under torchrun every rank learns each
step whether any rank was signalled (one small all-reduce), so all of them stop after the same step
and write the checkpoint together."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from ..errors import Interrupted
from . import distributed as ddp

log = logging.getLogger("torchjem")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """A context manager: inside it SIGINT and SIGTERM are requests to stop (``signum``), outside
    the previous handlers are back. Off the main thread (where Python cannot install handlers)
    nothing is installed and ``signum`` stays None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("%s: finishing this step, then saving the checkpoint (further signals are ignored "
                        "until it is written)", signal_name(signum))
        else:
            log.warning("%s ignored: the checkpoint is being written", signal_name(signum))

    def agreed(self) -> int | None:
        """The signal to stop for, the same on every rank (the highest number any rank got), or None."""
        if not ddp.is_distributed():
            return self.signum
        got = ddp.all_reduce_max_int(self.signum or 0)
        return got or None


def interrupted(signum: int, step: int, total: int, command: str) -> Interrupted:
    """The exception that ends an interrupted run: where it stopped, and the command that continues it."""
    return Interrupted(signum, f"interrupted by {signal_name(signum)} at step {step} of {total}; "
                               f"the checkpoint is saved; continue with: {command}")
