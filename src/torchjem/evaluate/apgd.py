"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"): PGD with momentum whose step size halves per input when the loss
stops rising, so that it needs no step-size tuning. Two losses: the cross-entropy (untargeted,
APGD-CE) and the difference of logits ratio towards a target class (targeted, APGD-T with DLR).

As ``attacks.pgd``: any nn.Module returning logits, the exact projection onto the eps-ball ∩ data
range, every iterate a candidate (per input a successful one is kept, else the one with the highest
loss), expectation over transformation (``eot``) for randomised models. Success is always a
misclassification of the true label ``y`` (a targeted attack aims at one wrong class to get there).
The result also carries the loss trace, for the check that the attack is not stuck.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..utils import DATA_RANGE, frozen_eval
from .attacks import AttackResult, _bcast, _normalise, _random_start, check_norm, check_range, project

LOSSES = ("ce", "dlr")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The difference of logits ratio per input, to be maximised (Croce & Hein 2020, eq. 5 and 6).

    Untargeted: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3); targeted towards ``target``:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with z_pi the logits sorted in decreasing order.
    Invariant to shifting and scaling the logits; with fewer than 4 classes the last sorted logit
    stands in for the missing ones.
    """
    s, _ = logits.sort(1, descending=True)
    c = logits.shape[1]
    z_y = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        other = torch.where(s[:, 0] == z_y, s[:, 1], s[:, 0])
        return -(z_y - other) / (s[:, 0] - s[:, min(2, c - 1)] + 1e-12)
    z_t = logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (s[:, 0] - (s[:, min(2, c - 1)] + s[:, min(3, c - 1)]) / 2 + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step: after 0.22 ``steps``, then after periods
    shorter by 0.03 ``steps`` each time, down to 0.06 ``steps`` (p_{j+1} = p_j + max(p_j - p_{j-1}
    - 0.03, 0.06) in integer iterations, as the authors' code counts them)."""
    period = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, at = [], period
    while at < steps:
        marks.append(at)
        period = max(period - shrink, shortest)
        at += period
    return marks


@dataclass
class APGDResult(AttackResult):
    """``AttackResult`` (x_adv, success, loss: the best loss per input) and the loss's course:
    ``loss_start`` per input (at the starting point) and ``trace``, the mean loss of the current
    iterates per iteration."""

    loss_start: torch.Tensor | None = None
    trace: list[float] | None = None


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 40,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    eot: int = 1,
    random_start: bool = True,
    rho: float = 0.75,
    momentum: float = 0.75,
    data_range: tuple[float, float] = DATA_RANGE,
) -> APGDResult:
    """APGD against ``model`` at radius ``eps``: ``loss`` "ce" (untargeted cross-entropy) or "dlr"
    (with ``target`` (N,) labels: targeted DLR, else untargeted DLR). The step starts at 2 eps and
    halves for an input at a checkpoint where fewer than ``rho`` of the steps since the last one
    raised its loss, or where neither the step nor the best loss changed; it then restarts from the
    best point. ``momentum`` weighs the new step against the last one. The model runs in eval mode
    with frozen parameters. InputError for bad settings, shapes or inputs outside ``data_range``.

    Args:
        model: any classifier returning logits (a ``JEMDefence`` for JEM-n).
        x: inputs (N, ...) in ``data_range``, on the model's device.
        y: their true labels (N,).
        eps: the radius (>= 0), in the data's scale.
        norm: "linf" or "l2" (default "linf").
        steps: iterations (default 40).
        loss: "ce" or "dlr" (default "ce").
        target: (N,) target labels of the targeted DLR loss (default None: untargeted).
        eot: forward passes averaged per gradient of a randomised model (default 1).
        random_start: start from a uniform point of the eps-ball, else from ``x`` (default True).
        rho: the fraction of raising steps below which the step halves at a checkpoint (default 0.75).
        momentum: the weight of the new step against the last one (default 0.75).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).

    Returns an ``APGDResult`` (x_adv, success, loss, loss_start, trace).
    """
    check_norm(norm)
    if eps < 0 or steps < 1 or eot < 1:
        raise InputError(f"APGD needs eps >= 0, steps >= 1 and eot >= 1, got {eps}, {steps}, {eot}")
    if loss not in LOSSES:
        raise InputError(f"APGD loss must be one of {LOSSES}, got {loss!r}")
    if y.ndim != 1 or len(y) != len(x) or (target is not None and target.shape != y.shape):
        raise InputError(f"APGD labels (and targets) must have shape ({len(x)},), got {tuple(y.shape)}")
    check_range(x, data_range)
    x0 = x.detach()
    n = len(x0)

    def objective(logits: torch.Tensor) -> torch.Tensor:
        if loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return dlr_loss(logits, y, target)

    def evaluate(xa: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        grad, logits_sum = None, None
        for _ in range(eot if need_grad else 1):
            xi = xa.detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                logits = model(xi)
                if need_grad:
                    (g,) = torch.autograd.grad(objective(logits).sum(), xi)
                    grad = g if grad is None else grad + g
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        logits = logits_sum / (eot if need_grad else 1)
        return objective(logits).detach(), logits.argmax(1) != y, grad

    best_x = x0.clone()
    best_success = torch.zeros(n, dtype=torch.bool, device=x0.device)
    best_loss = torch.full((n,), -float("inf"), device=x0.device, dtype=x0.dtype)

    def keep(xa: torch.Tensor, value: torch.Tensor, success: torch.Tensor) -> None:
        better = (success & ~best_success) | ((success == best_success) & (value > best_loss))
        best_x[better] = xa[better].detach()
        best_success[better] = success[better]
        best_loss[better] = value[better].to(best_loss.dtype)

    marks = set(checkpoints(steps))
    with frozen_eval(model):
        xk = (
            project(_random_start(x0, eps, norm), x0, eps, norm=norm, data_range=data_range)
            if random_start
            else x0.clone()
        )
        value, success, grad = evaluate(xk, True)
        keep(xk, value, success)
        loss_start, trace = value.clone(), [float(value.mean())]
        eta = torch.full((n,), 2.0 * eps, device=x0.device, dtype=x0.dtype)
        x_max, grad_max, loss_max = xk.clone(), grad.clone(), value.clone()  # the best point, for restarts
        x_prev, value_prev = xk.clone(), value
        ups = torch.zeros(n, device=x0.device)  # steps since the last checkpoint that raised the loss
        reduced_last = torch.ones(n, dtype=torch.bool, device=x0.device)
        loss_max_at_mark, last_mark = loss_max.clone(), 0
        for k in range(steps):
            a = 1.0 if k == 0 else momentum
            z = project(xk + _bcast(eta, xk) * _normalise(grad, norm), x0, eps, norm=norm, data_range=data_range)
            x_new = project(
                xk + a * (z - xk) + (1 - a) * (xk - x_prev), x0, eps, norm=norm, data_range=data_range
            ).detach()
            x_prev, xk = xk, x_new
            last = k == steps - 1
            value, success, g_new = evaluate(xk, need_grad=not last)
            keep(xk, value, success)
            trace.append(float(value.mean()))
            if last or bool(best_success.all()):
                break
            grad = g_new
            ups += (value > value_prev).float()
            value_prev = value
            better = value > loss_max
            x_max[better], grad_max[better], loss_max[better] = xk[better], grad[better], value[better]
            if k + 1 in marks:
                slow = ups < rho * (k + 1 - last_mark)
                flat = ~reduced_last & (loss_max_at_mark >= loss_max)
                reduce = slow | flat
                eta = torch.where(reduce, eta / 2, eta)
                xk = torch.where(_bcast(reduce, xk), x_max, xk)
                grad = torch.where(_bcast(reduce, grad), grad_max, grad)
                x_prev = torch.where(_bcast(reduce, xk), xk, x_prev)
                reduced_last, loss_max_at_mark, last_mark = reduce, loss_max.clone(), k + 1
                ups.zero_()
    return APGDResult(best_x, best_success, best_loss, loss_start=loss_start, trace=trace)


__all__ = ["APGDResult", "LOSSES", "apgd", "checkpoints", "dlr_loss"]
