"""Loading what a run wrote: its config, model, chain sampler (with the replay buffer) and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import build
from ..config import Config, from_dict
from ..data import DataSplits
from ..energy import JEM
from ..errors import DataError, InputError
from ..rundir import Cost, RunDir, RunState, read_state
from ..sampling import ChainSampler, LangevinSampler, ReplayBuffer
from ..training.batches import data_spec
from ..utils import resolve_device


@dataclass
class LoadedRun:
    """What ``load_run`` returns: the config, the model (eval mode), the chain sampler (its
    replay buffer, or fresh chains for a run without one) and the run state it was read from."""

    cfg: Config
    jem: JEM
    sampler: ChainSampler
    state: RunState
    path: Path

    @property
    def buffer(self) -> ReplayBuffer | None:
        return self.sampler.buffer

    @property
    def langevin(self) -> LangevinSampler:
        return self.sampler.langevin

    @property
    def data_meta(self) -> dict[str, Any]:
        """What the run was trained on: {"name", "shape", "n_classes"}."""
        return self.state.data.to_dict()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.state.data.shape

    @property
    def n_classes(self) -> int:
        return self.state.data.n_classes

    @property
    def cost(self) -> Cost | None:
        """What the run's training cost (its checkpoint's or export's ``RunState.cost``: passes,
        seconds; rundir/cost.py); None for a run written before costs were recorded."""
        return self.state.cost

    @property
    def dir(self) -> RunDir:
        """The run directory's layout (where its report, attack and samples go by default)."""
        return RunDir(self.path)

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    def data(self) -> DataSplits:
        """The run's data set, as configured (it must be loadable by name, or read from data.root:
        files and folders name their data after themselves)."""
        if self.data_meta["name"] != self.cfg.data.name and self.cfg.data.root is None:
            raise InputError(
                f"run {str(self.path)!r} was trained on data {self.data_meta['name']!r}, which cannot be loaded by "
                f"name (config data.name is {self.cfg.data.name!r}); pass the data (data=DataSplits)"
            )
        data = build.build_data(self.cfg)
        given = data_spec(data, data.name)
        diff = self.state.data.mismatch(given)
        if diff is not None:
            raise DataError(
                f"run {str(self.path)!r} was trained on {self.state.data.describe()}; its config's data loads as "
                f"{given.describe()} ({diff} differ)"
            )
        return data


def load_run(
    path: str | Path, which: str = "last", device: str | torch.device = "auto", model: nn.Module | None = None
) -> LoadedRun:
    """Load a run's model and chain sampler from its directory, or from a folder written by
    ``jem export`` (model.safetensors + torchjem.json). No code from the files runs; a run whose
    ``net.name`` is an import path imports that module. ``model``: the network of a run trained on
    a model object (any classifier, or a JEM)."""
    dev = resolve_device(device)
    state = read_state(path, which, map_location=dev)
    run = RunDir(path)
    cfg = from_dict(state.config)
    build.check_rebuildable(state.net, model, run.path)
    shape, n_classes = state.data.shape, state.data.n_classes
    jem = build.build_jem(cfg, shape, n_classes, model)
    jem.load_state_dict(state.model)
    jem.to(dev).eval()
    has_buffer = state.buffer is not None
    if has_buffer:  # the saved buffer's size (a data-parallel run saves every shard merged)
        cfg.buffer.size = len(state.buffer["x"])
    sampler = build.build_sampler(cfg, shape, n_classes, device=dev, buffer=has_buffer, mode=build.chain_mode(cfg, jem))
    if has_buffer:
        sampler.buffer.load_state_dict(state.buffer)
    return LoadedRun(cfg, jem, sampler, state, run.path)


def check_same_data(run: LoadedRun, other: LoadedRun, what: str = "baseline") -> None:
    """Refuse to compare runs trained on different data (name, shape, classes and class subset)."""
    a, b = run.state.data, other.state.data
    diff = a.mismatch(b, fingerprints=False)
    if diff is None and run.cfg.data.classes != other.cfg.data.classes:
        diff = "class subset (data.classes)"
    if diff is not None:
        raise DataError(
            f"{what} run {str(other.path)!r} was trained on other data ({b.describe()}, classes "
            f"{other.cfg.data.classes}) than {str(run.path)!r} ({a.describe()}, classes {run.cfg.data.classes}): "
            f"{diff} differ"
        )
