"""Attacks on any differentiable classifier, and the JEM-n defence they are run against.

- ``project``: the exact Euclidean projection onto {L-inf or L2 ball around x0} ∩ data range.
- ``pgd``: projected gradient descent (L-inf / L2), random start, restarts keeping the best
  adversarial per input, targeted or untargeted, expectation over transformation (EOT).
- ``JEMDefence``: classify after n SGLD steps on M noisy copies of each input, logits averaged;
  differentiable end to end so that the attack can go through the chains.
- ``distal_adversarials``: inputs optimised from noise to be classified as a chosen class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..energy import as_jem
from ..errors import InputError
from ..sampling import SGLD
from ..utils import DATA_RANGE, frozen_eval, model_device

NORMS = ("linf", "l2")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise InputError(f"attack norm must be one of {NORMS}, got {norm!r}")


def check_range(x: torch.Tensor, data_range: tuple[float, float], what: str = "attack input x") -> None:
    lo, hi = data_range
    if not torch.isfinite(x).all():
        raise InputError(f"{what} contains NaN or infinite values")
    if x.numel() and (x.min() < lo - 1e-6 or x.max() > hi + 1e-6):
        raise InputError(
            f"{what} has values in [{float(x.min()):.3g}, {float(x.max()):.3g}], outside the data range [{lo}, {hi}]"
        )


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, ...) to broadcast against a batch like ``like``."""
    return v.view(-1, *[1] * (like.ndim - 1))


def project(
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    data_range: tuple[float, float] = DATA_RANGE,
    iters: int = 40,
) -> torch.Tensor:
    """The nearest point to ``x`` (Euclidean) that is within ``eps`` of ``x0`` and inside ``data_range``.

    L-inf: the intersection of two boxes is a box, so clamping is exact. L2: the projection onto
    ball ∩ box is clamp(x0 + t (x - x0)) for the largest t in [0, 1] whose distance to x0 is at
    most eps (KKT conditions of the separable problem); that distance grows with t, so ``iters``
    bisection steps find t, always on the feasible side. Clamping after a plain ball projection
    (what most libraries do) stays feasible but is not the nearest point.

    Args:
        x: the points projected (N, ...).
        x0: the balls' centres, the same shape.
        eps: the radius, in the data's scale.
        norm: "linf" or "l2" (default "linf").
        data_range: (low, high) bounds of the result (default ``DATA_RANGE``).
        iters: bisection steps of the L2 projection (default 40; unused for L-inf).
    """
    check_norm(norm)
    lo, hi = data_range
    if norm == "linf":
        return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(lo, hi)
    d = x - x0

    def radius(t: torch.Tensor) -> torch.Tensor:
        return ((x0 + _bcast(t, d) * d).clamp(lo, hi) - x0).flatten(1).norm(dim=1)

    n = len(x)
    one = torch.ones(n, device=x.device, dtype=x.dtype)
    inside = radius(one) <= eps
    if bool(inside.all()):
        return x.clamp(lo, hi)
    t_lo, t_hi = torch.zeros_like(one), one.clone()
    for _ in range(iters):
        mid = (t_lo + t_hi) / 2
        ok = radius(mid) <= eps
        t_lo = torch.where(ok, mid, t_lo)
        t_hi = torch.where(ok, t_hi, mid)
    t = torch.where(inside, one, t_lo)
    return (x0 + _bcast(t, d) * d).clamp(lo, hi)


def _random_start(x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A point drawn uniformly from the eps-ball around x0 (before the data-range projection)."""
    if norm == "linf":
        return x0 + torch.empty_like(x0).uniform_(-eps, eps)
    direction = torch.randn_like(x0)
    direction = direction / _bcast(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x0)
    dim = x0[0].numel()
    radius = eps * torch.rand(len(x0), device=x0.device, dtype=x0.dtype) ** (1.0 / dim)
    return x0 + _bcast(radius, x0) * direction


def _normalise(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction for the norm: sign for L-inf, unit L2 gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _bcast(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


@dataclass
class AttackResult:
    """Per input: the best adversarial found, whether it succeeded, its cross-entropy for ``y``."""

    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    eot: int = 1,
    data_range: tuple[float, float] = DATA_RANGE,
) -> AttackResult:
    """Projected gradient descent on the cross-entropy of ``model`` (any nn.Module returning logits).

    Untargeted (``y`` = true labels): ascend the loss, success = misclassified. Targeted (``y`` =
    target labels): descend it, success = classified as the target. Each step moves by
    ``step_size`` (default 2.5 eps / steps, Madry et al.) along the sign (L-inf) or the unit
    gradient (L2), then projects exactly onto the eps-ball ∩ ``data_range``. Every iterate of every
    restart is a candidate: per input the result keeps a successful one if any (then the one with
    the best loss), not the last one. ``eot`` > 1 averages the gradient over that many forward passes
    of a randomised model (expectation over transformation), so the attack sees its expected
    gradient rather than one noisy draw. The model runs in eval mode with frozen parameters.

    Args:
        model: any classifier returning logits (a ``JEMDefence`` for JEM-n).
        x: inputs (N, ...) in ``data_range``, on the model's device.
        y: their true labels (N,), or the target labels when ``targeted``.
        eps: the radius (>= 0), in the data's scale.
        norm: "linf" or "l2" (default "linf").
        steps: iterations per restart (default 40).
        step_size: the step length (default None: 2.5 eps / steps).
        random_start: start from a uniform point of the eps-ball, else from ``x`` (default True).
        restarts: independent runs, the best result kept per input (default 1).
        targeted: descend the loss of ``y`` as targets instead of ascending it (default False).
        eot: forward passes averaged per gradient of a randomised model (default 1).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).

    Returns an ``AttackResult`` (x_adv, success, loss). InputError for bad settings, shapes or
    inputs outside ``data_range``.
    """
    check_norm(norm)
    if eps < 0:
        raise InputError(f"attack eps must be >= 0, got {eps}")
    if steps < 1 or restarts < 1 or eot < 1:
        raise InputError(f"attack steps, restarts and eot must be >= 1, got {steps}, {restarts}, {eot}")
    if step_size is not None and step_size <= 0:
        raise InputError(f"attack step_size must be > 0, got {step_size}")
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(f"attack labels y must have shape ({len(x)},), got {tuple(y.shape)}")
    check_range(x, data_range)
    x0 = x.detach()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    sign = -1.0 if targeted else 1.0
    labels_checked = False

    def evaluate(xa: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(loss per input, success per input, gradient of the summed loss or None)."""
        nonlocal labels_checked
        grad = None
        logits_sum = None
        for _ in range(eot if need_grad else 1):
            xi = xa.detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                logits = model(xi)
                if not labels_checked:  # once: the check synchronises with the device
                    if logits.ndim != 2 or not bool(((y >= 0) & (y < logits.shape[1])).all()):
                        raise InputError(
                            f"labels must be in [0, {logits.shape[-1] - 1}] for logits {tuple(logits.shape)}"
                        )
                    labels_checked = True
                loss = F.cross_entropy(logits, y, reduction="none")
            if need_grad:
                (g,) = torch.autograd.grad(loss.sum(), xi)
                grad = g if grad is None else grad + g
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        logits = logits_sum / (eot if need_grad else 1)
        loss = F.cross_entropy(logits, y, reduction="none")
        pred = logits.argmax(1)
        success = pred == y if targeted else pred != y
        return sign * loss, success, grad

    best_x = x0.clone()
    best_success = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    best_loss = torch.full((len(x0),), -float("inf"), device=x0.device, dtype=x0.dtype)

    def keep(xa: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> None:
        better = (success & ~best_success) | ((success == best_success) & (loss > best_loss))
        best_x[better] = xa[better].detach()
        best_success[better] = success[better]
        best_loss[better] = loss[better].to(best_loss.dtype)

    with frozen_eval(model):
        for _ in range(restarts):
            xa = (
                project(_random_start(x0, eps, norm), x0, eps, norm=norm, data_range=data_range)
                if random_start
                else x0.clone()
            )
            for t in range(steps + 1):
                last = t == steps
                loss, success, grad = evaluate(xa, need_grad=not last)
                keep(xa, loss, success)
                if last or bool(best_success.all()):
                    break
                xa = project(
                    xa + sign * alpha * _normalise(grad, norm), x0, eps, norm=norm, data_range=data_range
                ).detach()
            if bool(best_success.all()):
                break
    return AttackResult(best_x, best_success, sign * best_loss)


class JEMDefence(nn.Module):
    """JEM-n: classify after ``n_steps`` SGLD steps on log p(x), from ``n_chains`` noisy copies of each input.

    Each input is duplicated into ``n_chains`` chains, Gaussian noise (sigma ``init_noise``) is
    added, the chains take ``n_steps`` steps of an :class:`SGLD` (``self.sgld.step``: x +=
    step_size * d LSE f(x)/dx + noise * N(0, I)), and the logits of the refined chains are
    averaged. When the input requires a gradient (an attack), ``gradient="exact"`` keeps the SGLD
    steps' graph (create_graph=True) so gradients flow through the whole refinement, as in the
    paper; ``"bpda"`` runs the chains without a graph and passes the gradient straight through them
    (backward pass differentiable approximation, a check against gradient masking). Without an
    input gradient each step is detached, as in ``SGLD.run``.
    ``n_steps=0`` with ``init_noise=0`` is the plain classifier.
    """

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 10,
        n_chains: int = 5,
        step_size: float = 1.0,
        noise: float = 0.01,
        init_noise: float = 0.0,
        clamp: tuple[float, float] | None = None,
        grad_clamp: float | None = None,
        gradient: str = "exact",
    ) -> None:
        super().__init__()
        if n_chains < 1 or not init_noise >= 0:  # (the chains' own settings are checked by SGLD below)
            raise InputError(f"JEMDefence needs n_chains >= 1 and init_noise >= 0, got {n_chains}, {init_noise}")
        if gradient not in ("exact", "bpda"):
            raise InputError(f"JEMDefence gradient must be 'exact' or 'bpda', got {gradient!r}")
        self.jem = as_jem(model)
        self.n_chains, self.init_noise, self.gradient = n_chains, init_noise, gradient
        # The chains take SGLD's own steps: one Langevin update for training, sampling and this defence.
        self.sgld = SGLD(n_steps, step_size, noise, clamp, grad_clamp)

    @property
    def n_steps(self) -> int:
        return self.sgld.n_steps

    @classmethod
    def from_sampler(
        cls,
        model: nn.Module,
        sampler: SGLD,
        n_steps: int,
        *,
        n_chains: int = 5,
        init_noise: float = 0.0,
        gradient: str = "exact",
    ) -> JEMDefence:
        """The defence with a trained run's SGLD settings (step size, noise, clamps).

        Args:
            model: the classifier refined (a JEM, or a model ``as_jem`` wraps).
            sampler: the run's SGLD, whose step size, noise, clamp and grad_clamp the chains use.
            n_steps: SGLD steps per chain (0 with ``init_noise`` 0: the plain classifier).
            n_chains: noisy copies of each input whose logits are averaged (default 5).
            init_noise: the std of the Gaussian noise added to the copies, in data units (default 0.0).
            gradient: "exact" (through the chains) or "bpda" (straight through) (default "exact").
        """
        s = sampler
        return cls(model, n_steps, n_chains, s.step_size, s.noise, init_noise, s.clamp, s.grad_clamp, gradient)

    def refine(self, x: torch.Tensor) -> torch.Tensor:
        """The refined chains, shape (N * n_chains, ...); the chains of one input are consecutive."""
        differentiable = torch.is_grad_enabled() and x.requires_grad
        xs = x.repeat_interleave(self.n_chains, dim=0)
        if differentiable and self.gradient == "bpda":
            # Straight-through: run the chains without a graph, let the gradient pass as if identity.
            return xs + (self._chains(xs.detach(), False) - xs).detach()
        return self._chains(xs, differentiable)

    def _chains(self, xs: torch.Tensor, differentiable: bool) -> torch.Tensor:
        if self.init_noise > 0:
            xs = xs + self.init_noise * torch.randn_like(xs)
        with torch.enable_grad():
            for _ in range(self.sgld.n_steps):
                # differentiable: the step keeps its gradient's graph (exact gradient through the chains)
                xs = self.sgld.step(self.jem, xs, create_graph=differentiable)
        return xs if differentiable else xs.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.jem.logits(self.refine(x))
        return logits.view(len(x), self.n_chains, -1).mean(1)


def distal_adversarials(
    model: nn.Module,
    y: torch.Tensor,
    shape: tuple[int, ...],
    *,
    steps: int = 100,
    step_size: float = 0.02,
    data_range: tuple[float, float] = DATA_RANGE,
) -> torch.Tensor:
    """Inputs far from any data, each optimised from U(data_range) noise to be classified as ``y``.

    Signed-gradient ascent on log p(y|x) for ``steps`` steps, kept inside ``data_range``. The paper's
    point: a plain classifier gives them high confidence, while JEM's log p(x) marks them as unlikely.

    Args:
        model: any classifier returning logits.
        y: the target labels (N,), one adversarial per label.
        shape: the shape of one input, e.g. (1, 8, 8).
        steps: signed-gradient steps (default 100).
        step_size: the length of each step, in data units (default 0.02).
        data_range: (low, high) bounds of the noise drawn and of the adversarials (default ``DATA_RANGE``).

    Returns the adversarials (N, *shape) on the model's device. InputError for steps < 1 or
    step_size <= 0.
    """
    if steps < 1 or step_size <= 0:
        raise InputError(f"distal adversarials need steps >= 1 and step_size > 0, got {steps}, {step_size}")
    lo, hi = data_range
    device = model_device(model)
    y = y.to(device)
    x = torch.rand((len(y), *shape), device=device) * (hi - lo) + lo
    with frozen_eval(model):
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logp = model(x).log_softmax(1).gather(1, y[:, None]).sum()
                (g,) = torch.autograd.grad(logp, x)
            x = (x.detach() + step_size * g.sign()).clamp(lo, hi)
    return x.detach()


__all__ = ["AttackResult", "DATA_RANGE", "JEMDefence", "NORMS", "distal_adversarials", "pgd", "project"]
