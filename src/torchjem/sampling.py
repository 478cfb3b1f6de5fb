"""SGLD, the persistent replay buffer (PCD) and the chain sampler that owns both."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .energy import JEM, as_jem
from .errors import InputError
from .utils import frozen_eval, model_device


class SGLD:
    """Stochastic gradient Langevin dynamics on log p(x) (or log p(x, y) given labels).

    x <- x + step_size * d log p / dx + noise * N(0, I), for ``n_steps`` steps. Gradients are
    taken with respect to x only (parameters are frozen for the duration), no graph outlives a
    step, and the network runs in eval mode, as in the reference code.
    """

    def __init__(
        self,
        n_steps: int = 20,
        step_size: float = 1.0,
        noise: float = 0.01,
        clamp: tuple[float, float] | None = None,
        grad_clamp: float | None = None,
    ) -> None:
        if n_steps < 0:
            raise InputError(f"SGLD n_steps must be >= 0, got {n_steps}")
        if not step_size > 0 or not noise >= 0:  # also refuses NaN
            raise InputError(f"SGLD needs step_size > 0 and noise >= 0, got {step_size}, {noise}")
        self.n_steps = n_steps
        self.step_size = step_size
        self.noise = noise
        self.clamp = clamp
        self.grad_clamp = grad_clamp

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        n_steps: int | None = None,
    ) -> torch.Tensor:
        """Run the chains from ``x``; returns detached samples of the same shape."""
        jem = as_jem(model)
        steps = self.n_steps if n_steps is None else n_steps
        x = x.detach().clone()
        with frozen_eval(jem), torch.enable_grad():
            for _ in range(steps):
                x = self.step(jem, x, y)
        return x

    def step(self, jem: JEM, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One SGLD step (callers freeze the parameters; see ``run``)."""
        x = x.detach().requires_grad_(True)
        logp = jem.log_px(x) if y is None else jem.log_pxy(x, y)
        (grad,) = torch.autograd.grad(logp.sum(), x)
        if self.grad_clamp is not None:
            grad = grad.clamp(-self.grad_clamp, self.grad_clamp)
        x = x.detach().add_(grad, alpha=self.step_size)
        if self.noise > 0:
            x.add_(torch.randn_like(x), alpha=self.noise)
        if self.clamp is not None:
            x.clamp_(*self.clamp)
        return x


class ReplayBuffer(nn.Module):
    """Persistent buffer of SGLD chain states, split into per-class blocks.

    ``draw`` returns starting points and their indices (a fraction ``reinit_freq`` replaced by
    fresh initial noise); ``put`` writes the chains' final states back to those indices.
    Class-conditional draws come from the block of their class; unconditional draws from
    anywhere. The states are registered buffers: ``.to(device)`` moves them and
    ``state_dict()`` saves them, so the buffer follows the model it is given to.
    """

    def __init__(
        self,
        size: int,
        shape: tuple[int, ...],
        n_classes: int = 1,
        reinit_freq: float = 0.05,
        init: str = "uniform",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if n_classes < 1 or size < n_classes or size % n_classes:
            raise InputError(f"buffer size {size} must be a positive multiple of n_classes={n_classes}")
        if not 0.0 <= reinit_freq <= 1.0:
            raise InputError(f"buffer reinit_freq must be in [0, 1], got {reinit_freq}")
        if init not in ("uniform", "gaussian"):
            raise InputError(f"buffer init must be 'uniform' or 'gaussian', got {init!r}")
        self.size, self.shape, self.n_classes = size, tuple(shape), n_classes
        self.reinit_freq, self.init, self.data_range = reinit_freq, init, data_range
        self.block = size // n_classes
        device = torch.device(device)
        self.register_buffer("labels", torch.arange(size, device=device) // self.block, persistent=False)
        # Per-class Gaussian (JEM++ "informative" init), fitted from data by fit_gaussian; empty until then.
        self.register_buffer("mean", torch.empty(0, device=device))
        self.register_buffer("std", torch.empty(0, device=device))
        self.register_buffer("x", torch.empty((size, *self.shape), device=device, dtype=dtype))
        self.x = self.noise(self.labels, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def fit_gaussian(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fit per-class diagonal Gaussians to data and re-initialise the buffer from them.
        Examples with a negative label (unlabelled, -100) are left out."""
        keep = (y >= 0).to(x.device)
        x = x[keep].to(self.device, torch.float32).flatten(1)
        y = y[keep.to(y.device)].to(self.device)
        classes = range(self.n_classes) if self.n_classes > 1 else [None]
        means, stds = [], []
        for c in classes:
            xc = x if c is None else x[y == c]
            if len(xc) < 2:
                raise InputError(f"gaussian buffer init needs >= 2 examples of class {c}")
            means.append(xc.mean(0))
            stds.append(xc.std(0))
        self.mean = torch.stack(means).view(len(means), *self.shape)
        self.std = torch.stack(stds).view(len(stds), *self.shape)
        self.init = "gaussian"
        self.x = self.noise(self.labels, dtype=self.x.dtype)

    def noise(self, labels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Fresh initial states for chains of the given classes (labels ignored for uniform)."""
        dtype = dtype or self.x.dtype
        n = len(labels)
        lo, hi = self.data_range
        if self.init == "gaussian" and self.mean.numel():
            c = labels if len(self.mean) > 1 else torch.zeros_like(labels)
            eps = torch.randn((n, *self.shape), device=self.device, dtype=dtype)
            return (self.mean[c] + self.std[c] * eps).clamp(lo, hi).to(dtype)
        return torch.rand((n, *self.shape), device=self.device, dtype=dtype) * (hi - lo) + lo

    def draw(self, n: int, y: torch.Tensor | None = None, reinit: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` starting points (or one per label in ``y``) and their buffer indices; with
        ``reinit`` a fraction ``reinit_freq`` of them is fresh noise instead."""
        if y is None:
            idx = torch.randint(0, self.size, (n,), device=self.device)
        else:
            y = y.to(self.device)
            idx = y * self.block + torch.randint(0, self.block, (len(y),), device=self.device)
        x = self.x[idx]
        if reinit and self.reinit_freq > 0:
            fresh = torch.rand(len(idx), device=self.device) < self.reinit_freq
            x = torch.where(fresh.view(-1, *[1] * len(self.shape)), self.noise(self.labels[idx]), x)
        return x, idx

    def put(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        self.x[idx] = x.detach().to(self.x.device, self.x.dtype)

    def get_extra_state(self) -> dict[str, Any]:
        return {"init": self.init, "reinit_freq": self.reinit_freq}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.init = state.get("init", self.init)
        self.reinit_freq = float(state.get("reinit_freq", self.reinit_freq))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        # The fitted Gaussian's shape depends on the data, so it is assigned, not copied; the states
        # must match this buffer's layout. (Also reads the pre-0.2 dict with "init" / "reinit_freq".)
        x = state_dict.get(prefix + "x")
        if x is None:
            missing.append(prefix + "x")
            return
        if tuple(x.shape) != (self.size, *self.shape):
            raise InputError(f"replay buffer state has shape {tuple(x.shape)}, expected {(self.size, *self.shape)}")
        self.x = x.to(self.device, self.x.dtype).clone()
        for key in ("mean", "std"):
            if prefix + key in state_dict:
                setattr(self, key, state_dict[prefix + key].to(self.device, torch.float32).clone())
        legacy = {k: state_dict[prefix + k] for k in ("init", "reinit_freq") if prefix + k in state_dict}
        self.set_extra_state(state_dict.get(prefix + "_extra_state", legacy))


class ChainSampler(nn.Module):
    """The negative samples of a JEM: SGLD chains started from a replay buffer (persistent chains,
    PCD) or, without one, from fresh U(data_range) noise (short-run chains).

    ``sample(model, n, y=None)`` draws the starting points, runs ``sgld`` on ``model`` and writes
    the final states back to the buffer. The buffer follows the model's device.
    """

    def __init__(
        self,
        sgld: SGLD,
        buffer: ReplayBuffer | None = None,
        shape: tuple[int, ...] | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if buffer is None and shape is None:
            raise InputError("ChainSampler without a replay buffer needs the sample shape")
        self.sgld = sgld
        self.buffer = buffer
        self.shape = tuple(buffer.shape if buffer is not None else shape)
        self.data_range = buffer.data_range if buffer is not None else data_range

    @property
    def n_steps(self) -> int:
        return self.sgld.n_steps

    def sample(
        self,
        model: nn.Module,
        n: int | None = None,
        y: torch.Tensor | None = None,
        n_steps: int | None = None,
        update: bool = True,
        reinit: bool = True,
    ) -> torch.Tensor:
        """``n`` samples (or one per label in ``y``, class-conditional) after ``n_steps`` (default
        the sampler's K). ``update=False`` leaves the buffer as it was; ``reinit=False`` starts
        every chain from the buffer (no fresh chains)."""
        if y is None and n is None:
            raise InputError("sample needs n or labels y")
        n = len(y) if y is not None else n
        device = model_device(as_jem(model))
        if y is not None:
            y = y.to(device)
        idx = None
        if self.buffer is not None:
            if self.buffer.device != device:
                self.buffer.to(device)
            x0, idx = self.buffer.draw(n, y, reinit=reinit)
        else:
            lo, hi = self.data_range
            x0 = torch.rand((n, *self.shape), device=device) * (hi - lo) + lo
        x = self.sgld.run(model, x0, y, n_steps)
        if idx is not None and update:
            self.buffer.put(idx, x)
        return x

    def draw(
        self, model: nn.Module, n: int | None = None, y: torch.Tensor | None = None, n_steps: int | None = None
    ) -> torch.Tensor:
        """Samples to look at or score, leaving the buffer as it is. From a buffer, unconditional
        samples are its entries after ``n_steps`` more steps (default 0) and conditional ones the
        class's block after K steps; fresh chains run K steps (``n_steps`` overrides both)."""
        if n_steps is None:
            n_steps = 0 if self.buffer is not None and y is None else self.sgld.n_steps
        return self.sample(model, n, y, n_steps=n_steps, update=False, reinit=False)

    def fresh(self) -> ChainSampler:
        """The same SGLD from fresh U(data_range) noise, without the buffer."""
        return ChainSampler(self.sgld, shape=self.shape, data_range=self.data_range)


# -- the per-rank shards of a data-parallel run ----------------------------------------------
def shard_size(total: int, n_classes: int, world: int) -> int:
    """Entries per rank: ``total`` rounded down to a multiple of ``n_classes * world``, split."""
    per = total // (n_classes * world) * n_classes
    if per < n_classes:
        raise InputError(
            f"buffer.size={total} is too small for {world} processes: each rank's shard needs at least "
            f"one entry per class ({n_classes}); use buffer.size >= {n_classes * world}"
        )
    return per


def merge_shards(shards: list[torch.Tensor], n_classes: int) -> torch.Tensor:
    """One buffer from the ranks' shards, still in per-class blocks (class c's block holds
    rank 0's chains of class c, then rank 1's, ...), loadable as a single-process buffer."""
    blocks = [s.reshape(n_classes, -1, *s.shape[1:]) for s in shards]
    merged = torch.cat(blocks, dim=1)
    return merged.reshape(-1, *merged.shape[2:])


def split_shard(merged: torch.Tensor, n_classes: int, rank: int, world: int, size: int) -> tuple[torch.Tensor, int]:
    """Rank ``rank``'s shard of ``size`` entries from a merged buffer (the inverse of
    :func:`merge_shards` when the layout is unchanged); returns (shard, missing), where the
    ``missing`` entries per class (a larger new layout) are NaN for the caller to refill."""
    per_class = merged.reshape(n_classes, -1, *merged.shape[1:])
    block = size // n_classes
    lo, hi = rank * block, (rank + 1) * block
    part = per_class[:, lo:hi]
    missing = block - part.shape[1]
    if missing > 0:
        pad = torch.full((n_classes, missing, *part.shape[2:]), float("nan"), dtype=part.dtype)
        part = torch.cat([part, pad.to(part.device)], dim=1)
    return part.reshape(-1, *merged.shape[1:]).clone(), max(0, missing)
