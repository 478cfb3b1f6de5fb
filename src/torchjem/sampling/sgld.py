"""SGLD: the paper's stochastic gradient Langevin dynamics."""

from __future__ import annotations

import torch

from ..energy import JEM
from ..errors import InputError
from .base import LangevinSampler, langevin_update


class SGLD(LangevinSampler):
    """Stochastic gradient Langevin dynamics on log p(x) (or log p(x, y) given labels).

    x <- x + step_size * d log p / dx + noise * N(0, I), for ``n_steps`` steps (the gradient
    clamped to +-``grad_clamp``, the result to ``clamp``, when given). Gradients are taken with
    respect to x only (parameters are frozen for the duration), no graph outlives a step, and the
    network runs in eval mode, as in the reference code (``mode="train"``: batch statistics).
    """

    def __init__(
        self,
        n_steps: int = 20,
        step_size: float = 1.0,
        noise: float = 0.01,
        clamp: tuple[float, float] | None = None,
        grad_clamp: float | None = None,
        mode: str = "eval",
    ) -> None:
        if n_steps < 0:
            raise InputError(f"SGLD n_steps must be >= 0, got {n_steps}")
        if not step_size > 0 or not noise >= 0:  # also refuses NaN
            raise InputError(f"SGLD needs step_size > 0 and noise >= 0, got {step_size}, {noise}")
        if mode not in ("eval", "train"):
            raise InputError(f"SGLD mode must be 'eval' or 'train', got {mode!r}")
        self.mode = mode
        self.n_steps = n_steps
        self.step_size = self.base_step_size = step_size
        self.noise = noise
        self.clamp = clamp
        self.grad_clamp = grad_clamp

    def step(
        self, jem: JEM, x: torch.Tensor, y: torch.Tensor | None = None, create_graph: bool = False
    ) -> torch.Tensor:
        """One SGLD step from ``x`` (N, ...); callers freeze the parameters (see ``run``).

        ``create_graph=True`` keeps the step differentiable with respect to ``x`` (which must
        require a gradient): the gradient's own graph is kept, so a loss after the step
        differentiates through it (second derivatives; ``JEMDefence``'s exact gradient). Else the
        result is detached."""
        if not create_graph:
            x = x.detach().requires_grad_(True)
        logp = jem.log_px(x) if y is None else jem.log_pxy(x, y)
        (grad,) = torch.autograd.grad(logp.sum(), x, create_graph=create_graph)
        x = x if create_graph else x.detach()
        return langevin_update(x, grad, self.step_size, noise=self.noise, clamp=self.clamp, grad_clamp=self.grad_clamp)
