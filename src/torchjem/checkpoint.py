"""Atomic, safe save and load of run state (torch.load with weights_only=True: no code runs)."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, MissingError, WriteError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers see the old file or
    the new one, never half of one. Disk-full and permission errors name the path (torch's zip
    writer reports a full disk as a RuntimeError)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, RuntimeError) and not any(w in str(e).lower() for w in ("write", "unexpected pos")):
            raise  # not an I/O failure: a bug keeps its traceback
        why = f"{str(e).strip()[:200]}; check that the folder is writable and has free space"
        raise WriteError(f"cannot write {str(path)!r} ({why})") from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


TMP_SUFFIX = ".tmp"


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writes left in ``folder`` (call it only while no
    other process writes there: the run directory's lock holder). Returns what was removed."""
    removed = []
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    _atomic(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    required: tuple[str, ...] = (),
    allowed: tuple[type, ...] = (),
) -> dict[str, Any]:
    """Load a checkpoint without executing code (weights_only=True; ``allowed``: plain classes such
    as argparse.Namespace that other projects store beside their tensors). A truncated, empty,
    foreign or crafted file, or one without the ``required`` keys, is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"checkpoint {str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds Python objects other than tensors, numbers, strings, lists and dicts: "
            "loading it would run code, so it is refused (weights_only=True)"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for truncated or foreign files
        text = str(e).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(e).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({first[:200]}); it is truncated, empty or not a torchjem/torch "
            "checkpoint saved with tensors, numbers, strings, lists and dicts only"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, expected a dict")
    missing = [k for k in required if k not in state]
    if missing:
        what = ", ".join(missing)
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {what}: it is not a torchjem run checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG the training touches, in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` and write (then remove) a probe file in it, so that a command that will
    write there fails at once, not after its long work. Returns the folder."""
    folder = Path(folder)
    probe = folder / ".torchjem-write-probe"
    atomic_write_bytes(probe, b"")
    probe.unlink(missing_ok=True)
    return folder
