"""SGLD sampler and the persistent replay buffer (PCD)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .energy import JEM, as_jem


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; every module's mode and flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


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
            raise ValueError(f"SGLD n_steps must be >= 0, got {n_steps}")
        if step_size <= 0 or noise < 0:
            raise ValueError(f"SGLD needs step_size > 0 and noise >= 0, got {step_size}, {noise}")
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


class ReplayBuffer:
    """Persistent buffer of SGLD chain states, split into per-class blocks.

    ``draw`` returns starting points and their indices (a fraction ``reinit_freq`` replaced by
    fresh initial noise); ``put`` writes the chains' final states back to those indices.
    Class-conditional draws come from the block of their class; unconditional draws from
    anywhere. The buffer lives on ``device`` so that drawing and writing never leave it.
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
        if size < n_classes or size % n_classes:
            raise ValueError(f"buffer size {size} must be a positive multiple of n_classes={n_classes}")
        if not 0.0 <= reinit_freq <= 1.0:
            raise ValueError(f"buffer reinit_freq must be in [0, 1], got {reinit_freq}")
        if init not in ("uniform", "gaussian"):
            raise ValueError(f"buffer init must be 'uniform' or 'gaussian', got {init!r}")
        self.size, self.shape, self.n_classes = size, tuple(shape), n_classes
        self.reinit_freq, self.init, self.data_range = reinit_freq, init, data_range
        self.block = size // n_classes
        self.device = torch.device(device)
        # Per-class Gaussian (JEM++ "informative" init), fitted from data by fit_gaussian.
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.labels = torch.arange(size, device=self.device) // self.block
        self.x = self.noise(self.labels, dtype=dtype)

    def fit_gaussian(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fit per-class diagonal Gaussians to data and re-initialise the buffer from them."""
        x = x.to(self.device, torch.float32).flatten(1)
        y = y.to(self.device)
        classes = range(self.n_classes) if self.n_classes > 1 else [None]
        means, stds = [], []
        for c in classes:
            xc = x if c is None else x[y == c]
            if len(xc) < 2:
                raise ValueError(f"gaussian buffer init needs >= 2 examples of class {c}")
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
        if self.init == "gaussian" and self.mean is not None:
            c = labels if len(self.mean) > 1 else torch.zeros_like(labels)
            eps = torch.randn((n, *self.shape), device=self.device, dtype=dtype)
            return (self.mean[c] + self.std[c] * eps).clamp(lo, hi).to(dtype)
        return torch.rand((n, *self.shape), device=self.device, dtype=dtype) * (hi - lo) + lo

    def draw(self, n: int, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` starting points (or one per label in ``y``) and their buffer indices."""
        if y is None:
            idx = torch.randint(0, self.size, (n,), device=self.device)
        else:
            y = y.to(self.device)
            idx = y * self.block + torch.randint(0, self.block, (len(y),), device=self.device)
        x = self.x[idx]
        fresh = torch.rand(len(idx), device=self.device) < self.reinit_freq
        x = torch.where(fresh.view(-1, *[1] * len(self.shape)), self.noise(self.labels[idx]), x)
        return x, idx

    def put(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        self.x[idx] = x.detach().to(self.x.dtype)

    def state_dict(self) -> dict:
        state = {"x": self.x, "init": self.init, "reinit_freq": self.reinit_freq}
        if self.mean is not None:
            state["mean"], state["std"] = self.mean, self.std
        return state

    def load_state_dict(self, state: dict) -> None:
        x = state["x"]
        if tuple(x.shape) != (self.size, *self.shape):
            raise ValueError(f"replay buffer state has shape {tuple(x.shape)}, expected {(self.size, *self.shape)}")
        self.x = x.to(self.device, self.x.dtype).clone()
        self.init = state.get("init", self.init)
        self.reinit_freq = state.get("reinit_freq", self.reinit_freq)
        if "mean" in state:
            self.mean = state["mean"].to(self.device)
            self.std = state["std"].to(self.device)

    def to(self, device: torch.device | str) -> ReplayBuffer:
        self.device = torch.device(device)
        self.x = self.x.to(self.device)
        self.labels = self.labels.to(self.device)
        if self.mean is not None:
            self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        return self
