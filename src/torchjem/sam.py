"""Sharpness-aware minimisation (SAM, Foret et al. 2021) and its adaptive form (ASAM, Kwon et al.
2021) around any torch optimiser, as SADA-JEM trains JEMs.

A step: gradients g at the weights w; move to w + e, with e = rho * g / ||g|| (ASAM: e = rho *
|w|^2 g / || |w| g ||, elementwise |w|); take the gradient there (the caller runs the loss again on
the same batch and the same SGLD samples); come back to w and let the base optimiser step with that
second gradient. The optimiser's state_dict is the base optimiser's, so checkpoints do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .utils import frozen_bn_stats


class SAM:
    """``perturb()`` after the first backward, ``restore()`` after the second, then ``step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, rho: float, adaptive: bool = False) -> None:
        if not rho > 0:
            raise ValueError(f"SAM needs rho > 0, got {rho}")
        self.optimizer, self.rho, self.adaptive = optimizer, rho, adaptive
        self._moved: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def perturb(self) -> None:
        """w <- w + e(w): the ascent step to the worst point of the rho-neighbourhood (to first order)."""
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        scaled = [p.abs() * p.grad if self.adaptive else p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
        scale = self.rho / norm.clamp_min(1e-12)
        self._moved = []
        for p, s in zip(params, scaled):
            e = (p.abs() * s if self.adaptive else s) * scale
            p.add_(e)
            self._moved.append((p, e))

    def second_pass(self, model: nn.Module, loss: Callable[[], torch.Tensor]) -> None:
        """After the first backward: the gradients of ``loss()`` at w + e (batch norms keep their
        running statistics: the perturbed weights are not the model's), then back to w."""
        self.perturb()
        self.zero_grad(set_to_none=True)
        with frozen_bn_stats(model):
            loss().backward()
        self.restore()

    @torch.no_grad()
    def restore(self) -> None:
        """Back to w (the gradients are those taken at w + e)."""
        for p, e in self._moved:
            p.sub_(e)
        self._moved = []

    def step(self) -> None:
        self.optimizer.step()
