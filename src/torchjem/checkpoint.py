"""Atomic, safe save and load of run state (torch.load with weights_only=True: no code runs)."""

from __future__ import annotations

import json
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


RUN_KEYS = ("model", "config", "data", "step", "epoch")  # what a run's checkpoint must hold


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


# -- the export format: safetensors + JSON, readable without torchjem ------------------------------
EXPORT_META, EXPORT_WEIGHTS, EXPORT_BUFFER = "torchjem.json", "model.safetensors", "buffer.safetensors"
EXPORT_FORMAT = "torchjem-export"


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / EXPORT_META).is_file()


def save_export(folder: str | Path, state: dict[str, Any], source: dict[str, Any], buffer: bool = False) -> Path:
    """Write a run checkpoint's model as ``model.safetensors`` (tensor names as in the JEM's
    state_dict) and ``torchjem.json`` (network, data, config, where it came from); with
    ``buffer``, the replay buffer as ``buffer.safetensors``. Atomic, like every write here."""
    from safetensors.torch import save

    folder = Path(folder)
    weights = {k: v.detach().cpu().contiguous() for k, v in state["model"].items()}
    atomic_write_bytes(folder / EXPORT_WEIGHTS, save(weights, metadata={"format": EXPORT_FORMAT}))
    cfg = state["config"]
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "net": cfg["net"],
        "data": state["data"],
        "step": int(state["step"]),
        "epoch": int(state["epoch"]),
        "source": source,
        "config": cfg,
    }
    b = state.get("buffer")
    if buffer and b is not None:
        keep = [k for k in ("x", "mean", "std", "factor") if k in b and b[k].numel()]  # the fitted Gaussians too
        tensors = {k: b[k].detach().cpu().contiguous() for k in keep}
        atomic_write_bytes(folder / EXPORT_BUFFER, save(tensors))
        meta["buffer"] = dict(b.get("_extra_state", {}))
    atomic_write_text(folder / EXPORT_META, json.dumps(meta, indent=2))
    return folder


def load_export(folder: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """An export folder as a run checkpoint dict (model, buffer, config, data, step, epoch, net)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / EXPORT_META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(folder / EXPORT_META)!r} is not a torchjem export description ({e})") from None
    if meta.get("format") != EXPORT_FORMAT or not all(k in meta for k in ("net", "data", "config")):
        raise CheckpointError(f"{str(folder / EXPORT_META)!r} is not a {EXPORT_FORMAT} description")

    def tensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(folder / name, device=str(map_location))
        except (OSError, SafetensorError, ValueError) as e:
            raise CheckpointError(f"{str(folder / name)!r} cannot be read as safetensors ({e})") from None

    state: dict[str, Any] = {
        "model": tensors(EXPORT_WEIGHTS),
        "config": meta["config"],
        "data": meta["data"],
        "step": meta.get("step", 0),
        "epoch": meta.get("epoch", 0),
        "net": {"source": "export", "name": meta["net"].get("name", "")},
        "buffer": None,
    }
    if (folder / EXPORT_BUFFER).is_file():
        state["buffer"] = {**tensors(EXPORT_BUFFER), "_extra_state": meta.get("buffer", {})}
    return state
