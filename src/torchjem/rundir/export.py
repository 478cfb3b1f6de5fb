"""The export format of a run: safetensors + JSON, readable without torchjem (`jem export`).

EXPORT/torchjem.json        {"format": "torchjem-export", "version": 1, "net", "data", "step",
                             "epoch", "source", "config", "buffer"?: the buffer's settings}
EXPORT/model.safetensors    the JEM's state_dict (tensor names as in it)
EXPORT/buffer.safetensors   the replay buffer's tensors (optional: x, and fitted Gaussians)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..config import without_run_path
from ..errors import CheckpointError
from ..sampling import buffer_settings, buffer_state
from .cost import Cost
from .layout import EXPORT_BUFFER, EXPORT_WEIGHTS, RunDir
from .state import DataSpec, Progress, RunState

EXPORT_FORMAT = "torchjem-export"
BUFFER_TENSORS = ("x", "mean", "std", "factor")  # the chains and the fitted Gaussians of the buffer's init


def save_export(folder: str | Path, state: RunState, source: dict[str, Any], buffer: bool = False) -> Path:
    """Write ``state``'s model as model.safetensors and torchjem.json (network, data, config,
    where it came from); with ``buffer``, the replay buffer as buffer.safetensors. Atomic."""
    from safetensors.torch import save

    run = RunDir(folder)
    weights = {k: v.detach().cpu().contiguous() for k, v in state.model.items()}
    atomic_write_bytes(run.path / EXPORT_WEIGHTS, save(weights, metadata={"format": EXPORT_FORMAT}))
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "net": state.config["net"],
        "data": state.data.to_dict(),
        "step": state.progress.step,
        "epoch": state.progress.epoch,
        "source": source,
        "config": state.config,
    }
    if state.cost is not None:  # what training it cost (rundir/cost.py), for --init-from comparisons
        meta["cost"] = state.cost.to_dict()
    b = state.buffer
    if buffer and b is not None:
        keep = [k for k in BUFFER_TENSORS if k in b and b[k].numel()]
        tensors = {k: b[k].detach().cpu().contiguous() for k in keep}
        atomic_write_bytes(run.path / EXPORT_BUFFER, save(tensors))
        meta["buffer"] = buffer_settings(b)
    atomic_write_text(run.export_meta, json.dumps(meta, indent=2))
    return run.path


def load_export(folder: str | Path, map_location: str | torch.device = "cpu") -> RunState:
    """An export folder as a run state (model, buffer, config, data, step, epoch; net source "export")."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = RunDir(folder)
    try:
        meta = json.loads(run.export_meta.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(run.export_meta)!r} is not a torchjem export description ({e})") from None
    if meta.get("format") != EXPORT_FORMAT or not all(k in meta for k in ("net", "data", "config")):
        raise CheckpointError(f"{str(run.export_meta)!r} is not a {EXPORT_FORMAT} description")

    def tensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(run.path / name, device=str(map_location))
        except (OSError, SafetensorError, ValueError) as e:
            raise CheckpointError(f"{str(run.path / name)!r} cannot be read as safetensors ({e})") from None

    buffer = None
    if (run.path / EXPORT_BUFFER).is_file():
        buffer = buffer_state(**tensors(EXPORT_BUFFER), **meta.get("buffer", {}))
    return RunState(
        model=tensors(EXPORT_WEIGHTS),
        config=without_run_path(meta["config"]),
        data=DataSpec.from_dict(meta["data"]),
        net={"source": "export", "name": meta["net"].get("name", "")},
        buffer=buffer,
        progress=Progress(step=int(meta.get("step", 0)), epoch=int(meta.get("epoch", 0))),
        cost=Cost.from_dict(meta.get("cost")),
    )
