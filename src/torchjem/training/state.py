"""The train state: everything a checkpoint holds (model, optimiser, replay buffer, every RNG,
counters, config, data description), its save and load, in-memory snapshots, and the re-split
of the replay buffer when a run resumes on another number of processes."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import build
from ..checkpoint import RUN_KEYS, load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state
from ..config import Config, from_dict, load_config
from ..energy import JEM
from ..errors import MissingError, RunDirError
from ..rundir import RunDir, RunLock
from ..sampling import ReplayBuffer, merge_shards, split_shard
from ..utils import seed_everything
from . import distributed as ddp

VERSION = 2  # 2: the buffer is an nn.Module state_dict; "net" records how to rebuild the network


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


def net_record(cfg: Config, model: nn.Module | None) -> dict[str, str]:
    """How to rebuild the network: from the config, or (a model object passed in Python) its class."""
    if model is None:
        return {"source": "config", "name": cfg.net.name}
    cls = type(model.net if isinstance(model, JEM) else model)
    return {"source": "object", "class": f"{cls.__module__}:{cls.__qualname__}"}


class TrainState:
    """The state of one run (on every rank of a distributed run)."""

    def __init__(
        self,
        cfg: Config,
        jem: JEM,
        optimizer: torch.optim.Optimizer,
        buffer: ReplayBuffer | None,
        data: dict[str, Any],
        net: dict[str, str],
        device: torch.device,
    ) -> None:
        self.cfg, self.jem, self.optimizer, self.buffer = cfg, jem, optimizer, buffer
        self.data, self.net, self.device = data, net, device
        self.rank, self.world_size = ddp.get_rank(), ddp.get_world_size()
        self.progress = Progress()

    def state_dict(self) -> dict[str, Any]:
        """The whole run state. In a distributed run every rank must call it (it gathers): rank 0
        gets the complete state (buffer shards merged, every rank's RNG state under
        ``"distributed"``), the other ranks their local view."""
        state = {
            "version": VERSION,
            "model": self.jem.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "rng": rng_state(),
            **asdict(self.progress),
            "config": self.cfg.to_dict(),
            "data": self.data,
            "net": self.net,
        }
        if self.world_size > 1:
            rngs = ddp.gather_objects(ddp.rank_rng_state(self.device))
            shards = ddp.gather_tensors(self.buffer.x) if self.buffer is not None else None
            if self.rank == 0:
                state["distributed"] = {"world_size": self.world_size, "rng": rngs}
                if shards is not None:
                    # one buffer in per-class blocks: loadable by load_run, re-split on resume
                    n_classes = self.buffer.n_classes
                    state["buffer"] = {**state["buffer"], "x": merge_shards(shards, n_classes)}
        return state

    def save(self, path: Path) -> None:
        """Write a checkpoint (rank 0 writes; in a distributed run every rank must call it)."""
        state = self.state_dict()
        if self.rank == 0:
            save_checkpoint(path, state)

    def load_state_dict(self, state: dict[str, Any]) -> str | None:
        """Restore a state (each rank takes its buffer shard and RNG state). A checkpoint written
        by another number of processes is re-split and the RNGs re-seeded; the returned note
        says so (None otherwise)."""
        self.jem.load_state_dict(state["model"])
        if state.get("optimizer") is not None:  # (an imported run starts with a fresh optimiser)
            self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(
            int(state["step"]), int(state["epoch"]), int(state.get("batch", 0)), float(state["lr_scale"]),
            int(state["retries"]), float(state["best_val"]), float(state.get("step_scale", 1.0)),
        )  # fmt: skip
        saved_world = int(state.get("distributed", {}).get("world_size", 1))
        if saved_world == self.world_size == 1:
            if self.buffer is not None and state.get("buffer") is not None:
                self.buffer.load_state_dict(state["buffer"])
            if "rng" in state:
                set_rng_state(state["rng"])
            return None
        return self._load_sharded(state, saved_world)

    def _load_sharded(self, state: dict[str, Any], saved_world: int) -> str | None:
        same = saved_world == self.world_size
        if same:
            ddp.set_rank_rng_state(state["distributed"]["rng"][self.rank], self.device)
        else:  # the saved streams belong to other ranks: fresh ones, fixed by (seed, step, rank)
            seed_everything(ddp.rank_seed(self.cfg.seed + 31_337 * (int(state["step"]) + 1), self.rank))
        new_chains = 0
        b = state.get("buffer")
        if self.buffer is not None and b is not None:
            n_classes = self.buffer.n_classes
            x, missing = split_shard(b["x"], n_classes, self.rank, self.world_size, self.buffer.size)
            if missing:  # a larger layout than the saved one: new chains for the missing entries
                empty = x.flatten(1).isnan().any(1).to(self.device)
                x = x.to(self.device)
                x[empty] = self.buffer.noise(self.buffer.labels[empty])
                new_chains = missing * n_classes
            self.buffer.load_state_dict({**b, "x": x})
        refilled = int(ddp.all_reduce_sum(torch.tensor(new_chains, device=self.device)))  # on every rank
        if same:
            return None
        size = self.buffer.size if self.buffer is not None else 0
        return (
            f"checkpoint written by {saved_world} process(es), resumed on {self.world_size}: replay buffer "
            f"re-split into {self.world_size} shard(s) of {size} entries ({refilled} new chains), RNGs re-seeded "
            f"per rank; the run continues from step {int(state['step'])} but not bit for bit"
        )

    # -- in-memory snapshots (the divergence guard's good states) -------------------------------
    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "model": self.jem.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "buffer": self.buffer.state_dict() if self.buffer is not None else None,
                "progress": asdict(self.progress),
            }
        )

    def restore(self, snap: dict[str, Any]) -> None:
        self.jem.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        if self.buffer is not None and snap["buffer"] is not None:
            self.buffer.load_state_dict(snap["buffer"])
        # the position (step, epoch, batch) and best score come back; the guard's counters stay
        p, keep = self.progress, ("lr_scale", "retries", "step_scale")
        for k, v in snap["progress"].items():
            if k not in keep:
                setattr(p, k, v)


def read_resume(run_dir: str | Path, overrides: list[str], model: nn.Module | None) -> tuple[Config, dict[str, Any]]:
    """The config (saved one + ``overrides``, ``out`` = ``run_dir`` wherever it now is) and the state
    of a run's last checkpoint. Under torchrun rank 0 reads it and sends it to the others (their
    node may not see the file)."""
    run = RunDir(run_dir)
    ckpt = run.checkpoint("last")

    def read() -> dict[str, Any]:
        if not ckpt.is_file():
            raise MissingError(
                f"cannot resume {str(run.path)!r}: no checkpoint at {ckpt} (it is written after the first epoch)"
            )
        return load_checkpoint(ckpt, required=RUN_KEYS)

    device = [o.split("=", 1)[1] for o in overrides if o.startswith("device=")]
    ddp.init_distributed(device[-1] if device else "auto")
    state = ddp.run_on_main(read)
    build.check_rebuildable(state.get("net"), model, run.path)
    return load_config(None, [f"out={run.path}", *overrides], base=from_dict(state["config"])), state


def claim(run: RunDir, lock: RunLock, overwrite: bool, resuming: bool) -> None:
    """Take a run directory for training: its lock (one writer), and refuse a finished run unless
    ``resuming`` or ``overwrite`` (which clears it); removes the temporaries of killed writes."""
    lock.acquire()
    if not resuming and run.has_run():
        if not overwrite:
            lock.release()
            raise RunDirError(
                f"run directory {str(run.path)!r} already holds a run; continue it with "
                f"`jem train --resume {run.path}` (Trainer.resume), or start over with --overwrite"
            )
        run.clear()
    remove_stale_temporaries(run.checkpoints)
