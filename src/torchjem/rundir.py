"""A run directory's layout: where a run writes each thing.

RUN_DIR/config.yaml        resolved config
RUN_DIR/metrics.jsonl      one JSON object per line (iterations, epochs, events)
RUN_DIR/train.log          the log
RUN_DIR/checkpoints/       last.pt, best.pt, epoch_NNNN.pt
RUN_DIR/samples/           PNG sample grids
RUN_DIR/.lock              held by the process that trains into it
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import RunDirError, WriteError

log = logging.getLogger("torchjem")


class RunDir:
    """Paths inside one run directory (nothing is created until something is written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    log = property(lambda self: self.path / "train.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    samples = property(lambda self: self.path / "samples")
    report = property(lambda self: self.path / "report")
    attack = property(lambda self: self.path / "attack")

    def checkpoint(self, which: str = "last") -> Path:
        """Path of ``last``, ``best``, ``epoch_NNNN`` or an explicit file."""
        p = Path(which)
        if p.suffix == ".pt" and p.is_file():
            return p
        return self.checkpoints / f"{which}.pt"

    def has_run(self) -> bool:
        """Whether a run already wrote here (a checkpoint or metrics)."""
        return self.checkpoint("last").is_file() or self.metrics.is_file()

    def clear(self) -> None:
        """Remove what a previous run wrote (checkpoints, metrics, log, config), for ``--overwrite``."""
        import shutil

        shutil.rmtree(self.checkpoints, ignore_errors=True)
        for p in (self.metrics, self.log, self.config):
            p.unlink(missing_ok=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl ([] without one). A line that is not a JSON object (a run
        killed while writing it, then resumed) is skipped with a warning."""
        if not self.metrics.is_file():
            return []
        records, bad = [], 0
        for line in self.metrics.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
        if bad:
            log.warning("%s: skipped %d line(s) that are not JSON records", self.metrics, bad)
        return records


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on RUN_DIR/.lock, which records the
    holder's pid and host for the message a second writer gets. The operating system drops the
    lock when its process dies, so a killed run leaves no stale lock, while orphaned workers of a
    killed launcher still hold it. (Where ``fcntl`` does not exist, e.g. Windows, nothing is locked.)"""

    def __init__(self, run: RunDir) -> None:
        self.run, self._file, self._created = run, None, False

    @property
    def path(self) -> Path:
        return self.run.path / ".lock"

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            self._created = not self.run.path.exists()
            self.run.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:
            raise WriteError(f"cannot create run directory {str(self.run.path)!r} ({e})") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunDirError(
                f"run directory {str(self.run.path)!r} is in use by {holder}; wait for that run to end (or stop it), "
                "or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f

    def wait(self) -> None:
        """Block until no process holds the run directory (returns at once when none does)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        if not self.path.is_file():
            return
        with open(self.path) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # granted once the writer's exclusive lock is gone
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def abandon(self) -> None:
        """Release, and remove the directory again if acquiring created it and nothing else was
        written there (a run refused before it started leaves nothing behind)."""
        self.release()
        if self._created and [p.name for p in self.run.path.iterdir()] in ([".lock"], []):
            self.path.unlink(missing_ok=True)
            self.run.path.rmdir()

    close = release  # for contextlib.closing

    def __del__(self) -> None:
        self.release()
