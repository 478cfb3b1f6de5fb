"""A run directory: where a run writes, and how to load what it wrote.

RUN_DIR/config.yaml        resolved config
RUN_DIR/metrics.jsonl      one JSON object per line (iterations, epochs, events)
RUN_DIR/train.log          the log
RUN_DIR/checkpoints/       last.pt, best.pt, epoch_NNNN.pt
RUN_DIR/samples/           PNG sample grids
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .config import Config, ConfigError, from_dict, load_config
from .energy import JEM
from .nets import create_net, net_options
from .sampling import SGLD, ReplayBuffer


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    log = property(lambda self: self.path / "train.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    samples = property(lambda self: self.path / "samples")

    def checkpoint(self, which: str = "last") -> Path:
        """Path of ``last``, ``best``, ``epoch_NNNN`` or an explicit file."""
        p = Path(which)
        if p.suffix == ".pt" and p.is_file():
            return p
        return self.checkpoints / f"{which}.pt"

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def build_jem(cfg: Config, shape: tuple[int, ...], n_classes: int) -> JEM:
    """The configured network (filled in with the data's channels and classes) as a JEM."""
    try:
        params = net_options(cfg.net.name)
    except ValueError as e:
        raise ConfigError(f"config net.name: {e}") from None
    kwargs = dict(cfg.net.kwargs)
    defaults = {
        "in_channels": shape[0],
        "in_features": math.prod(shape),
        "n_classes": n_classes,
        "image_size": shape[-1],
    }
    for key, value in defaults.items():
        if key in params and key not in kwargs:
            kwargs[key] = value
    if cfg.net.energy_head:
        kwargs["n_classes"] = 0
        net = create_net(cfg.net.name, **kwargs)
        dim = getattr(net, "feature_dim", None)
        if dim is None:
            raise ConfigError(f"net {cfg.net.name!r} has no feature_dim; net.energy_head needs one")
        return JEM(net, energy_head=True, n_classes=n_classes, feature_dim=dim)
    return JEM(create_net(cfg.net.name, **kwargs))


def build_sampler(cfg: Config) -> SGLD:
    s = cfg.sgld
    return SGLD(s.steps, s.step_size, s.noise, (-1.0, 1.0) if s.clamp else None, s.grad_clamp)


def build_buffer(cfg: Config, shape: tuple[int, ...], n_classes: int, device: torch.device) -> ReplayBuffer:
    size = cfg.buffer.size - cfg.buffer.size % n_classes
    return ReplayBuffer(size, shape, n_classes, cfg.buffer.reinit_freq, "uniform", device)


class LoadedRun:
    """What ``load_run`` returns: the config, the model (eval mode), the buffer, the sampler."""

    def __init__(self, cfg: Config, jem: JEM, buffer: ReplayBuffer | None, sampler: SGLD, state: dict) -> None:
        self.cfg, self.jem, self.buffer, self.sampler, self.state = cfg, jem, buffer, sampler, state


def load_run(
    path: str | Path, which: str = "last", device: str | torch.device = "auto", model: torch.nn.Module | None = None
) -> LoadedRun:
    """Load a run's model and replay buffer from its directory (no code is executed)."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise FileNotFoundError(f"run directory {str(run.path)!r} does not exist")
    ckpt = run.checkpoint(which)
    if not ckpt.is_file():
        raise FileNotFoundError(f"run {str(run.path)!r} has no checkpoint {which!r} (looked for {ckpt})")
    dev = resolve_device(device) if isinstance(device, str) else device
    state = load_checkpoint(ckpt, map_location=dev)
    cfg = from_dict(state["config"]) if "config" in state else load_config(run.config)
    meta = state["data"]
    shape, n_classes = tuple(meta["shape"]), int(meta["n_classes"])
    jem = JEM(model) if model is not None else build_jem(cfg, shape, n_classes)
    jem.load_state_dict(state["model"])
    jem.to(dev).eval()
    buffer = None
    if state.get("buffer") is not None:
        b = state["buffer"]["x"]
        buffer = ReplayBuffer(len(b), shape, n_classes, cfg.buffer.reinit_freq, "uniform", dev)
        buffer.load_state_dict(state["buffer"])
    return LoadedRun(cfg, jem, buffer, build_sampler(cfg), state)
