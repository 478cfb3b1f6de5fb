"""One writer per run directory: the lock as one context manager.

``with RunLock(run).claim(overwrite=..., resuming=...):`` takes the directory (an exclusive
``flock`` on RUN_DIR/.lock that records the holder), refuses a finished run unless resuming or
overwriting, removes the temporaries of killed writes, and on leaving releases the lock; when the
block fails and nothing was written, a directory the claim created is removed again. The
operating system drops a ``flock`` when its process dies, so a killed run leaves no stale lock.
Where ``fcntl`` does not exist (Windows) nothing is locked, everywhere the same way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from ..checkpoint import remove_stale_temporaries
from ..errors import RunDirError, WriteError
from .layout import RunDir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


class FileLock:
    """An exclusive ``flock`` on one file (a no-op where ``fcntl`` does not exist). As a context
    manager it blocks until the lock is free; ``try_acquire`` does not block."""

    def __init__(self, path: str | Path) -> None:
        self.path, self._file = Path(path), None

    def _open(self) -> IO[str]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, "a+")
        except OSError as e:
            raise WriteError(f"cannot create lock file {str(self.path)!r} ({e})") from None

    def try_acquire(self) -> str | None:
        """Take the lock without waiting: None when taken, else what the holder wrote into the file."""
        if fcntl is None:  # pragma: no cover - not POSIX
            return None
        f = self._open()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            return holder
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f
        return None

    def acquire(self) -> None:
        """Take the lock, waiting for its holder."""
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        f = self._open()
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        self._file = f

    def wait(self) -> None:
        """Block until no process holds the lock (returns at once when none does); takes nothing."""
        if fcntl is None or not self.path.is_file():  # pragma: no cover - not POSIX
            return
        with open(self.path) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # granted once the exclusive holder is gone
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class RunLock:
    """The single writer of a run directory. ``claim`` takes it (raising RunDirError naming the
    holder when another process has it); used as a context manager it is released on leaving,
    and abandoned (the directory removed again if the claim created it and nothing was written)
    when the block raises."""

    def __init__(self, run: RunDir | str | Path) -> None:
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self._lock = FileLock(self.run.lock_file)
        self._created = False

    @property
    def path(self) -> Path:
        return self._lock.path

    def acquire(self) -> None:
        """Take the lock (no check of what the directory holds)."""
        self._created = not self.run.path.exists()
        try:
            self.run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create run directory {str(self.run.path)!r} ({e})") from None
        holder = self._lock.try_acquire()
        if holder is not None:
            raise RunDirError(
                f"run directory {str(self.run.path)!r} is in use by {holder}; wait for that run to end (or stop it), "
                "or choose another --out"
            )

    def claim(self, *, overwrite: bool = False, resuming: bool = False) -> RunLock:
        """Take the directory for writing a run: the lock, then refuse a directory that already
        holds a run unless ``resuming`` or ``overwrite`` (which clears it); removes the temporaries
        of killed writes. Returns self (for ``with RunLock(run).claim(...):``)."""
        self.acquire()
        if not resuming and self.run.has_run():
            if not overwrite:
                self.release()
                raise RunDirError(
                    f"run directory {str(self.run.path)!r} already holds a run; continue it with "
                    f"`jem train --resume {self.run.path}` (Trainer.resume), or start over with --overwrite"
                )
            self.run.clear()
        remove_stale_temporaries(self.run.checkpoints)
        return self

    def wait(self) -> None:
        """Block until no process writes into the run directory."""
        self._lock.wait()

    def release(self) -> None:
        self._lock.release()

    def abandon(self) -> None:
        """Release, and remove the directory again if ``acquire`` created it and nothing else was
        written there (a run refused before it started leaves nothing behind)."""
        self.release()
        path = self.run.path
        if self._created and path.is_dir() and [p.name for p in path.iterdir()] in ([".lock"], []):
            self.path.unlink(missing_ok=True)
            path.rmdir()

    @contextlib.contextmanager
    def abandon_on_error(self) -> Iterator[None]:
        """Abandon the claim if the block raises (a run refused while it was being set up)."""
        try:
            yield
        except BaseException:
            self.abandon()
            raise

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abandon() if kind is not None else self.release()
