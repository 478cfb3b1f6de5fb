"""What the chains' samplers share: the Langevin update and the run of a chain (parameters frozen)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..energy import JEM, as_jem
from ..utils import frozen

Step = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x, y) -> x: one step of a run


def langevin_update(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    *,
    noise: float = 0.0,
    clamp: tuple[float, float] | None = None,
    grad_clamp: float | None = None,
) -> torch.Tensor:
    """x <- clamp(x + step_size * clamp(grad, -grad_clamp, grad_clamp) + noise * N(0, I), *clamp).

    ``x`` and ``grad``: the same shape (N, ...). Out of place, so it is differentiable when ``x``
    and ``grad`` carry a graph (``JEMDefence``'s exact gradient); pass ``x.detach()`` otherwise.
    The one Langevin update of :class:`SGLD`, PYLD's inner steps and the JEM-n defence: one noise
    draw (``torch.randn_like(x)``) when ``noise > 0``, none else, so seeded chains agree.

    Args:
        x: the chains' states (N, ...).
        grad: the gradient of log p(x) at ``x``, the same shape.
        step_size: the gradient's multiplier.
        noise: the std of the Gaussian noise added, in data units (default 0.0: none, no draw).
        clamp: (low, high) bounds of the result (default None: unbounded).
        grad_clamp: bound on the gradient's absolute values (default None: unclipped).
    """
    if grad_clamp is not None:
        grad = grad.clamp(-grad_clamp, grad_clamp)
    # torch.add(alpha=) is one fused multiply-add: the same numbers as the in-place add_ it replaced
    return add_noise(torch.add(x, grad, alpha=step_size), noise, clamp)


def add_noise(x: torch.Tensor, noise: float, clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """x + noise * N(0, I) (no draw when ``noise`` is 0), then clamped to ``clamp`` when given."""
    if noise > 0:
        x = torch.add(x, torch.randn_like(x), alpha=noise)
    if clamp is not None:
        x = x.clamp(*clamp)
    return x


class LangevinSampler:
    """Base of the chains' samplers (:class:`SGLD`, :class:`PYLD`): ``run`` and ``scale_step``.

    A subclass sets ``n_steps``, ``mode`` (``eval`` or ``train``: the network's mode during the
    chains), ``step_size`` (readable and settable: the step the divergence guard scales) and
    ``base_step_size`` (the step it was built with), and defines ``step(jem, x, y)``; one that
    needs set-up for a run (PYLD finds its first layer) overrides ``_steps``.
    """

    n_steps: int
    mode: str
    step_size: float
    base_step_size: float

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        n_steps: int | None = None,
    ) -> torch.Tensor:
        """Run the chains from ``x`` (N, ...) for ``n_steps`` steps (default ``self.n_steps``), on
        log p(x), or on log p(x, y) given labels ``y`` (N,); returns detached samples of the same
        shape. ``model``: a JEM or any classifier returning logits. Gradients are taken with
        respect to x only: the parameters are frozen and the network is in ``self.mode`` during
        the run, and every module's mode and flag come back after."""
        jem = as_jem(model)
        steps = self.n_steps if n_steps is None else n_steps
        x = x.detach().clone()
        if steps <= 0:
            return x
        with frozen(jem, self.mode), torch.enable_grad(), self._steps(jem, x) as step:
            for _ in range(steps):
                x = step(x, y)
        return x.detach()

    @contextlib.contextmanager
    def _steps(self, jem: JEM, x: torch.Tensor) -> Iterator[Step]:
        """The step function of one run, ``(x, y) -> x``, set up for the chains starting at ``x``."""
        yield lambda x, y: self.step(jem, x, y)

    def step(self, jem: JEM, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def scale_step(self, factor: float) -> None:
        """Set the step size to ``base_step_size * factor`` (the divergence guard's back-off,
        ``Progress.step_scale``): relative to the step the sampler was built with, not cumulative,
        so applying the same factor again (on resume) gives the same step."""
        self.step_size = self.base_step_size * factor
