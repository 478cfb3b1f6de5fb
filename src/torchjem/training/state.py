"""The train state: everything a checkpoint holds (model, optimiser, replay buffer, every RNG,
counters, config, data description), its save and load, in-memory snapshots, and the re-split
of the replay buffer when a run resumes on another number of processes."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import build
from ..checkpoint import rng_state, set_rng_state
from ..config import Config, ConfigError, from_dict, load_config, parse_overrides
from ..energy import JEM
from ..errors import MissingError
from ..rundir import Cost, DataSpec, Progress, RunDir, RunState
from ..sampling import ReplayBuffer, merge_shards, split_shard
from ..utils import seed_everything
from . import distributed as ddp
from .cost import CostMeter

log = logging.getLogger("torchjem")


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
        data: DataSpec,
        net: dict[str, str],
        device: torch.device,
    ) -> None:
        self.cfg, self.jem, self.optimizer, self.buffer = cfg, jem, optimizer, buffer
        self.data, self.net, self.device = data, net, device
        self.rank, self.world_size = ddp.get_rank(), ddp.get_world_size()
        self.progress = Progress()
        self.meter = CostMeter(device, self.world_size)  # what the training costs (kept in checkpoints)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict of ``capture()`` (every rank must call it in a distributed run)."""
        return self.capture().to_checkpoint()

    def capture(self) -> RunState:
        """The whole run state. In a distributed run every rank must call it (it gathers): rank 0
        gets the complete state (buffer shards merged, every rank's RNG state under
        ``"distributed"``), the other ranks their local view."""
        state = RunState(
            model=self.jem.state_dict(),
            config=self.cfg.to_dict(),
            data=self.data,
            net=self.net,
            optimizer=self.optimizer.state_dict(),
            buffer=self.buffer.state_dict() if self.buffer is not None else None,
            rng=rng_state(),
            progress=copy.copy(self.progress),
            cost=copy.deepcopy(self.meter.fold()),
        )
        if self.world_size > 1:
            rngs = ddp.gather_objects(ddp.rank_rng_state(self.device))
            shards = ddp.gather_tensors(self.buffer.x) if self.buffer is not None else None
            if self.rank == 0:
                state.distributed = {"world_size": self.world_size, "rng": rngs}
                if shards is not None:
                    # one buffer in per-class blocks: loadable by load_run, re-split on resume
                    n_classes = self.buffer.n_classes
                    state.buffer = {**state.buffer, "x": merge_shards(shards, n_classes)}
        return state

    def save(self, path: Path) -> None:
        """Write a checkpoint (rank 0 writes; in a distributed run every rank must call it)."""
        state = self.capture()
        if self.rank == 0:
            state.save(path)

    def load_state_dict(self, state: RunState | dict[str, Any]) -> str | None:
        """Restore a state (a RunState or a checkpoint dict; each rank takes its buffer shard and
        RNG state). A checkpoint written by another number of processes is re-split and the RNGs
        re-seeded; the returned note says so (None otherwise)."""
        if isinstance(state, dict):
            state = RunState.from_checkpoint(state)
        self.jem.load_state_dict(state.model)
        if state.optimizer is not None:  # (an imported run starts with a fresh optimiser)
            self.optimizer.load_state_dict(state.optimizer)
        self.progress = copy.copy(state.progress)
        # the cost so far goes on (a checkpoint without one: counted from this step on)
        cost = copy.deepcopy(state.cost) if state.cost is not None else Cost(since_step=state.progress.step)
        self.meter = CostMeter(self.device, self.world_size, cost)
        if state.world_size == self.world_size == 1:
            if self.buffer is not None and state.buffer is not None:
                self.buffer.load_state_dict(state.buffer)
            if state.rng is not None:
                set_rng_state(state.rng)
            return None
        return self._load_sharded(state)

    def _load_sharded(self, state: RunState) -> str | None:
        saved_world, step = state.world_size, state.progress.step
        same = saved_world == self.world_size
        if same:
            ddp.set_rank_rng_state(state.distributed["rng"][self.rank], self.device)
        else:  # the saved streams belong to other ranks: fresh ones, fixed by (seed, step, rank)
            seed_everything(ddp.rank_seed(self.cfg.seed + 31_337 * (step + 1), self.rank))
        new_chains = 0
        b = state.buffer
        if self.buffer is not None and b is not None:
            n_classes = self.buffer.n_classes
            x, missing = split_shard(b["x"], n_classes, self.rank, world=self.world_size, size=self.buffer.size)
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
            f"per rank; the run continues from step {step} but not bit for bit"
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


def read_resume(
    run_dir: str | Path, overrides: list[str] | dict[str, Any] | None, model: nn.Module | None
) -> tuple[Config, RunState]:
    """The config (saved one + ``overrides``: a dict, or KEY=VALUE strings) and the state of a
    run's last checkpoint. Under torchrun rank 0 reads it and sends it to the others (their node
    may not see the file)."""
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    run = RunDir(run_dir)
    ckpt = run.checkpoint("last")

    def read() -> RunState:
        if not ckpt.is_file():
            raise MissingError(
                f"cannot resume {str(run.path)!r}: no checkpoint at {ckpt} (it is written after the first epoch)"
            )
        return RunState.load(ckpt)

    ddp.init_distributed(extra.get("device", "auto"))
    state = ddp.run_on_main(read)
    build.check_rebuildable(state.net, model, run.path)
    cfg = load_config(None, extra, base=from_dict(state.config))
    saved_size = state.config.get("buffer", {}).get("size")
    # On another number of processes the buffer is re-split and may grow (new chains fill the
    # entries the saved one lacks: docs/distributed.md); on the same number its chains continue.
    same_layout = state.world_size == ddp.get_world_size()
    if state.buffer is not None and saved_size is not None and cfg.buffer.size != saved_size and same_layout:
        raise ConfigError(
            f"cannot resume {str(run.path)!r} with buffer.size = {cfg.buffer.size}: the replay buffer's size is fixed "
            f"for a run (its chains continue; this one holds {saved_size}); resume without buffer.size, or start a "
            "new run (--out) with it"
        )
    return cfg, state


def reset_backoff(progress: Progress, cfg: Config, saved: dict[str, Any]) -> None:
    """On resume with changed settings (``cfg`` against the ``saved`` config dict): a new
    ``optim.lr`` gets a fresh divergence retry budget and no lr back-off (the advice after giving
    up), a new SGLD step size no step back-off."""
    if cfg.optim.lr != saved["optim"]["lr"]:
        log.info("new optim.lr %g: divergence retries (%d) and lr back-off (%g) reset", cfg.optim.lr,
                 progress.retries, progress.lr_scale)
        progress.retries, progress.lr_scale = 0, 1.0
    old = (saved["sgld"]["step_size"], saved["sgld"].get("inner_step_size"))
    if (cfg.sgld.step_size, cfg.sgld.inner_step_size) != old:
        progress.step_scale = 1.0
