"""The one error type for user errors, and its kinds.

A ``UserError`` is a problem with what the user gave (a config value, data, a checkpoint, a
command-line argument, a run directory, a disk that cannot be written): its message names the
thing and what was expected. ``jem`` prints it as one ``error:`` line and exits 2, before long work
where it can. Any other exception is a bug and keeps its traceback. The kinds also derive from the
built-in type a Python caller would expect (ValueError, FileNotFoundError, OSError).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message says what to change."""


class ConfigError(UserError, ValueError):
    """A configuration key or value that is not valid."""


class DataError(UserError, ValueError):
    """Data that cannot be used: a wrong shape, labels out of range, an unreadable file."""


class InputError(UserError, ValueError):
    """An argument of a library call or a command-line option that is not valid."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read: truncated, empty, foreign or missing parts."""


class MissingError(UserError, FileNotFoundError):
    """A file or directory that does not exist."""


class RunDirError(UserError):
    """A run directory that cannot be used now: held by another trainer, or a finished run."""


class WriteError(UserError, OSError):
    """A file that cannot be written (disk full, read-only, not a directory); names the path."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT: Ctrl-C; SIGTERM: a cluster's pre-emption) after saving
    what it needs to continue. ``message`` says where it stopped and how to continue; ``jem`` prints
    it as one line and exits with ``exit_code`` (128 + the signal: 130, 143). A KeyboardInterrupt, so
    that code catching Ctrl-C keeps working."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def one_line(text: str) -> str:
    """A message's lines as one: joined by a space after a sentence or a colon, else by "; "."""
    out = ""
    for line in (raw.strip() for raw in text.splitlines()):
        if line:
            out = line if not out else out + (" " if out.endswith((".", ":")) else "; ") + line
    return out
