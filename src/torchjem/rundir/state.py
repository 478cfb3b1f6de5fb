"""The typed state of a run: the only code that builds or reads a checkpoint dict.

A checkpoint (RUN_DIR/checkpoints/*.pt) is a dict of tensors, numbers, strings, lists and dicts,
loaded with ``torch.load(weights_only=True)`` so that no code runs:

    version      2 (1: the replay buffer as a bare tensor; still read)
    model        the JEM's state_dict
    optimizer    the optimiser's state_dict (None for an imported run: it starts a fresh one)
    buffer       the replay buffer's state_dict (None without one)
    rng          every RNG the training touches (torch, numpy, python, cuda)
    step, epoch, batch, lr_scale, retries, best_val, step_scale     the progress counters
    config       the resolved config as a dict (no run path: older files' "out" is dropped)
    data         {"name", "shape", "n_classes"} of the data it was trained on (and, since issue 19,
                 "class_names", "length", "fingerprint": see DataSpec)
    net          how to rebuild the network ({"source": "config" | "object" | "export", ...})
    distributed  {"world_size", "rng": per-rank RNG states} when written by several processes
    cost         what the training cost so far (passes by kind, seconds: rundir/cost.py); absent
                 in checkpoints written before issue 22
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import without_run_path
from ..errors import CheckpointError
from .cost import Cost

VERSION = 2  # 2: the buffer is an nn.Module state_dict; "net" records how to rebuild the network
REQUIRED = ("model", "config", "data", "step", "epoch")  # what a run's checkpoint must hold


@dataclass
class Progress:
    """The counters of a run."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch (a mid-epoch checkpoint resumes there)
    lr_scale: float = 1.0  # divergence back-off
    retries: int = 0  # divergence recoveries so far
    best_val: float = -1.0  # best validation accuracy
    step_scale: float = 1.0  # divergence back-off of the SGLD step size (divergence.step_factor)
    energy_anchor: float = math.nan  # objective.energy_anchor = start: the anchor once set (NaN: not yet)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Progress:
        """The counters of a checkpoint dict (counters older files lack take their defaults)."""
        kinds = {f.name: type(f.default) for f in fields(cls)}
        return cls(**{k: kinds[k](state[k]) for k in kinds if k in state})


@dataclass
class DataSpec:
    """What a run was trained on: the data set's name, one input's shape and the class count;
    when recorded (runs since issue 19; older checkpoints lack them and load as None): the class
    names, the training set's length and a fingerprint of a few of its examples (``fingerprint``
    in training/state.py). ``mismatch`` says how another spec differs."""

    name: str
    shape: tuple[int, ...]
    n_classes: int
    class_names: list[str] | None = None
    length: int | None = None
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "n_classes": self.n_classes}
        for key in ("class_names", "length", "fingerprint"):
            if getattr(self, key) is not None:
                d[key] = list(self.class_names) if key == "class_names" else getattr(self, key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        names = d.get("class_names")
        return cls(
            str(d["name"]), tuple(int(s) for s in d["shape"]), int(d["n_classes"]),
            [str(n) for n in names] if names is not None else None,
            int(d["length"]) if d.get("length") is not None else None,
            str(d["fingerprint"]) if d.get("fingerprint") is not None else None,
        )

    def describe(self) -> str:
        """One line: name, shape, classes (and their names, length, fingerprint when recorded)."""
        text = f"{self.name!r} ({'x'.join(map(str, self.shape))}, {self.n_classes} classes"
        if self.class_names is not None and self.class_names != [str(i) for i in range(self.n_classes)]:
            shown = self.class_names[:6] + (["..."] if len(self.class_names) > 6 else [])
            text += f" [{', '.join(shown)}]"
        if self.length is not None:
            text += f", {self.length} training examples"
        if self.fingerprint is not None:
            text += f", fingerprint {self.fingerprint}"
        return text + ")"

    def mismatch(self, other: DataSpec, *, fingerprints: bool = True) -> str | None:
        """What differs between this spec and ``other`` (name, shape, class count; class names,
        and with ``fingerprints`` length and examples, where both recorded them), or None. Two
        runs compared side by side (``--baseline``) may have trained on different amounts of the
        same data set: ``fingerprints=False``."""
        diffs = []
        if self.name != other.name:
            diffs.append("name")
        if tuple(self.shape) != tuple(other.shape):
            diffs.append("input shape")
        if self.n_classes != other.n_classes:
            diffs.append("class count")
        keys = [("class_names", "class names")] + ([("length", "length"), ("fingerprint", "examples")] * fingerprints)
        for key, what in keys:
            a, b = getattr(self, key), getattr(other, key)
            if a is not None and b is not None and a != b:
                diffs.append(what)
        return ", ".join(diffs) if diffs else None


@dataclass
class RunState:
    """Everything a run's checkpoint holds (see the module docstring for the file format)."""

    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    data: DataSpec
    net: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    buffer: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    progress: Progress = field(default_factory=Progress)
    distributed: dict[str, Any] | None = None
    cost: Cost | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (version 2)."""
        state: dict[str, Any] = {
            "version": VERSION,
            "model": self.model,
            "optimizer": self.optimizer,
            "buffer": self.buffer,
            "rng": self.rng,
            **asdict(self.progress),
            "config": self.config,
            "data": self.data.to_dict(),
            "net": self.net,
        }
        if self.rng is None:
            del state["rng"]
        if self.distributed is not None:
            state["distributed"] = self.distributed
        if self.cost is not None:
            state["cost"] = self.cost.to_dict()
        return state

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], where: str = "checkpoint") -> RunState:
        """Read a checkpoint dict (version 1 or 2); CheckpointError naming ``where`` if it is not a run's."""
        missing = [k for k in REQUIRED if k not in state]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}: it is not a torchjem run checkpoint")
        config = without_run_path(state["config"])  # the run's path is no longer config
        try:
            data = DataSpec.from_dict(state["data"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: its data description {state['data']!r} is malformed ({e})") from None
        return cls(
            model=state["model"],
            config=config,
            data=data,
            net=state.get("net"),
            optimizer=state.get("optimizer"),
            buffer=state.get("buffer"),
            rng=state.get("rng"),
            progress=Progress.from_checkpoint(state),
            distributed=state.get("distributed"),
            cost=Cost.from_dict(state.get("cost")),
        )

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically."""
        save_checkpoint(path, self.to_checkpoint())

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> RunState:
        """Load a checkpoint without running code (MissingError / CheckpointError naming the file)."""
        return cls.from_checkpoint(load_checkpoint(path, map_location=map_location), f"checkpoint {str(path)!r}")

    @property
    def world_size(self) -> int:
        """How many processes wrote it."""
        return int((self.distributed or {}).get("world_size", 1))


def read_state(run_dir: str | Path, which: str = "last", map_location: str | torch.device = "cpu") -> RunState:
    """The state of a run directory's checkpoint ``which`` (last, best, epoch_NNNN or a .pt file),
    or of a `jem export` folder. MissingError when the folder or the checkpoint does not exist."""
    from ..errors import MissingError
    from .export import load_export
    from .layout import RunDir

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise MissingError(f"run directory {str(run.path)!r} does not exist")
    if run.is_export():
        return load_export(run.path, map_location=map_location)
    ckpt = run.checkpoint(which)
    if not ckpt.is_file():
        raise MissingError(f"run {str(run.path)!r} has no checkpoint {which!r} (looked for {ckpt})")
    return RunState.load(ckpt, map_location)
