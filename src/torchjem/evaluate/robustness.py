"""Adversarial robustness as in the JEM paper: robust accuracy against epsilon for JEM-0, JEM-n and
a baseline and distal adversarials (files and plots: torchjem.workflows.attack).

An input counts as robust at eps only if the model classifies correctly every adversarial kept for
it at every eps' <= eps (the ball grows with eps, so an adversarial found at a smaller eps is one at
a larger eps too). Curves therefore never rise with eps, and eps = 0 is the clean accuracy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..utils import model_device, predict_logits
from .attacks import DATA_RANGE, check_norm, check_range, distal_adversarials, pgd
from .ood import ood_scores
from .results import DistalResult, RobustAccuracy

log = logging.getLogger("torchjem")
# Default eps lists in the [-1, 1] data scale (8/255 in [0, 1] is 16/255 ~ 0.063 here).
DEFAULT_EPS = {"linf": [0.0, 0.025, 0.05, 0.1, 0.2, 0.3], "l2": [0.0, 0.25, 0.5, 1.0, 2.0, 3.0]}


def eps_key(eps: float) -> str:
    """The string form of an epsilon used as a JSON key: 0, 0.05, 0.1, ..."""
    return f"{eps:g}"


def check_eps(eps: Sequence[float]) -> list[float]:
    eps = [float(e) for e in eps]
    if not eps:
        raise InputError("attack eps list is empty")
    if any(e < 0 or not math.isfinite(e) for e in eps) or eps != sorted(eps):
        raise InputError(f"attack eps must be finite, >= 0 and in increasing order, got {eps}")
    return eps


def adversarial_accuracy(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> tuple[list[float], torch.Tensor]:
    """Robust accuracy per eps of adversarials ``x_adv`` (E, N, ...) for labels ``y`` (N,).

    Returns (accuracy per eps, robust mask (E, N)): an input is robust at eps index k when the
    model classifies all of its adversarials 0..k correctly.
    """
    if x_adv.ndim < 3 or x_adv.shape[1] != len(y):
        raise InputError(f"adversarials must have shape (n_eps, {len(y)}, ...), got {tuple(x_adv.shape)}")
    robust = _correct(model, x_adv, y, batch_size).cumprod(dim=0).bool()
    return robust.float().mean(1).tolist(), robust


def _correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(E, N) bool: whether ``model`` classifies each adversarial correctly."""
    return torch.stack([predict_logits(model, xe, batch_size).argmax(1) == y.cpu() for xe in x_adv])


@dataclass(frozen=True, kw_only=True)
class PGDSettings:
    """How PGD attacks (``pgd``'s options), one object for ``robust_accuracy``, ``jem attack`` and
    attack.json: the threat model ``norm`` (linf | l2), ``steps`` iterations of ``step_size`` (None:
    2.5 eps / steps), a ``random_start`` in the ball, ``restarts`` (per input the best adversarial
    is kept), ``targeted`` (a random wrong class per input), ``eot`` (the gradient averaged over this
    many draws of a randomised model)."""

    norm: str = "linf"
    steps: int = 40
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    eot: int = 1

    def check(self) -> PGDSettings:
        """Raise InputError for an unknown norm or a count below 1; returns self."""
        check_norm(self.norm)
        bad = {k: v for k, v in (("steps", self.steps), ("restarts", self.restarts), ("eot", self.eot)) if v < 1}
        if bad:
            raise InputError(f"PGD settings must be >= 1, got {bad}")
        if self.step_size is not None and not self.step_size > 0:
            raise InputError(f"PGD step_size must be > 0 (or None: 2.5 eps / steps), got {self.step_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as attack.json records them (``step_size`` None as its rule, in words)."""
        out = asdict(self)
        out["step_size"] = self.step_size if self.step_size is not None else "2.5*eps/steps"
        return out


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: Sequence[float],
    attack: PGDSettings | None = None,
    candidates: torch.Tensor | None = None,
    batch_size: int = 100,
    data_range: tuple[float, float] = DATA_RANGE,
    progress: bool = True,
    desc: str = "PGD",
) -> RobustAccuracy:
    """PGD at every eps (increasing) against ``model``; robust accuracy per eps and the adversarials.

    At each eps the adversarial from the previous eps is kept unless the new attack found a
    successful one where it had not, so the figures never rise with eps.

    Args:
        model: any classifier returning logits (a ``JEMDefence`` for JEM-n).
        x, y: inputs (N, ...) in ``data_range`` and their labels (N,).
        eps: radii, increasing, in the data's scale.
        attack: the PGD settings (default ``PGDSettings()``: L-inf, 40 steps). Targeted attacks aim
            at a random wrong class per input (seeded by the global RNG); accuracy still counts
            correct classifications.
        candidates: (E, N, ...) adversarials made against another model (e.g. JEM-0's against
            JEM-n, a transfer attack); where one fools ``model`` and the direct attack did not, it
            is kept instead (``accuracy_direct`` is the figure without them).
        batch_size: inputs attacked at once (default 100).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).
        progress: show a progress bar (default True).
        desc: the progress bar's label (default "PGD").

    Returns a ``RobustAccuracy`` (eps, accuracy, accuracy_direct, n, x_adv (E, N, ...) on the CPU,
    robust (E, N) bool). InputError for bad settings, eps list, data range or shapes.
    """
    attack = (attack or PGDSettings()).check()
    eps = check_eps(eps)
    if len(x) == 0 or len(x) != len(y):
        raise InputError(f"robust_accuracy needs as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    check_range(x, data_range)
    if candidates is not None and tuple(candidates.shape) != (len(eps), *x.shape):
        raise InputError(f"candidates must have shape {(len(eps), *x.shape)}, got {tuple(candidates.shape)}")
    device = model_device(model)
    n_classes = predict_logits(model, x[:2].to(device)).shape[1]
    targets = (y + torch.randint(1, n_classes, y.shape)) % n_classes if attack.targeted else y
    x_adv = torch.empty((len(eps), *x.shape), dtype=x.dtype)
    n_batches = math.ceil(len(x) / batch_size)
    bar = tqdm(total=n_batches * len(eps), desc=desc, disable=not progress, leave=False)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        tb = targets[i : i + batch_size].to(device)
        prev, prev_success = xb, None
        for k, e in enumerate(eps):
            if e > 0:
                res = pgd(model, xb, tb, eps=e, **asdict(attack), data_range=data_range)
                xa, success = res.x_adv, res.success
                if prev_success is not None:
                    carry = prev_success & ~success
                    xa = torch.where(carry.view(-1, *[1] * (xa.ndim - 1)), prev, xa)
                    success = success | prev_success
                prev, prev_success = xa, success
            x_adv[k, i : i + len(xb)] = prev.detach().cpu()
            bar.update(1)
    bar.close()
    # One evaluation per adversarial decides (a randomised defence is not re-drawn), so the figure
    # with candidates is never above the direct one, and equals ``adversarial_accuracy`` of the kept
    # adversarials for a deterministic model.
    correct = _correct(model, x_adv, y, batch_size)
    direct = correct.cumprod(dim=0).float().mean(1).tolist()
    if candidates is not None:
        fooled_by_candidate = ~_correct(model, candidates, y, batch_size)
        use = correct & fooled_by_candidate
        x_adv = torch.where(use.view(*use.shape, *[1] * (x_adv.ndim - 2)), candidates.to(x_adv.dtype), x_adv)
        correct = correct & ~fooled_by_candidate
    robust = correct.cumprod(dim=0).bool()
    accuracy = robust.float().mean(1).tolist()
    return RobustAccuracy(eps=eps, accuracy=accuracy, accuracy_direct=direct, n=len(x), x_adv=x_adv, robust=robust)


def robustness_comparison(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: Sequence[float],
    attack: PGDSettings | None = None,
    transfer: dict[str, str] | None = None,
    batch_size: int = 100,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """{model name: {eps as string: robust accuracy}} for several models under the same ``attack``.

    ``transfer`` {target: source}: the source model's adversarials (attacked earlier in ``models``'
    order) are also tried against the target (see ``robust_accuracy``'s ``candidates``).

    Args:
        models: {name: classifier returning logits}, attacked in this order.
        x: inputs (N, ...) in the data range.
        y: their labels (N,).
        eps: radii, increasing, in the data's scale.
        attack: the PGD settings (default ``PGDSettings()``: L-inf, 40 steps).
        transfer: {target: source} model names (default None: no transfer).
        batch_size: inputs attacked at once (default 100).
        progress: show a progress bar per model (default True).
    """
    transfer = transfer or {}
    names = list(models)
    for target, source in transfer.items():
        if target not in models or source not in models or names.index(source) > names.index(target):
            raise InputError(f"transfer {target!r} <- {source!r}: both must be models, the source listed first")
    out, adversarials = {}, {}
    for name, model in models.items():
        cand = adversarials[transfer[name]] if name in transfer else None
        res = robust_accuracy(
            model, x, y, eps=eps, attack=attack, candidates=cand, batch_size=batch_size, progress=progress,
            desc=f"PGD {name}",
        )
        adversarials[name] = res.x_adv
        out[name] = {eps_key(e): a for e, a in zip(res.eps, res.accuracy)}
    return out


def distal_report(
    model: nn.Module,
    x_data: torch.Tensor,
    n: int = 100,
    *,
    steps: int = 100,
    step_size: float = 0.02,
    data_range: tuple[float, float] = DATA_RANGE,
) -> tuple[DistalResult, torch.Tensor]:
    """Distal adversarials for classes 0, 1, 2, ... (``n`` in all) and how the model sees them.

    Returns (figures, the adversarials (n, ...) on the CPU). Figures (a ``DistalResult``): mean
    target confidence, the fraction classified as the target, mean log p(x) of the adversarials and
    of ``x_data``, the AUROC with which log p(x) tells data (positive) from distal adversarials, and
    the fraction of adversarials whose log p(x) is below the 5th percentile of the data's. A JEM
    should give high confidence and still a low log p(x); a plain classifier's logsumexp does not
    carry that meaning. InputError for n < 1 or no data.

    Args:
        model: the classifier (a JEM for a meaningful log p(x)).
        x_data: data inputs (M, ...), the reference for log p(x) and the inputs' shape.
        n: adversarials made, for classes 0, 1, 2, ... in turn (default 100).
        steps: signed-gradient steps per adversarial (default 100).
        step_size: the length of each step, in data units (default 0.02).
        data_range: (low, high) bounds of the adversarials (default ``DATA_RANGE``).
    """
    from sklearn.metrics import roc_auc_score

    if n < 1 or len(x_data) == 0:
        raise InputError(f"distal_report needs n >= 1 and some data, got n={n}, {len(x_data)} data points")
    n_classes = predict_logits(model, x_data[:2]).shape[1]
    y = torch.arange(n) % n_classes
    x = distal_adversarials(model, y, tuple(x_data.shape[1:]), steps=steps, step_size=step_size, data_range=data_range)
    prob = predict_logits(model, x).softmax(1)
    lp_adv, lp_data = (ood_scores(model, v, ["px"])["px"].float() for v in (x, x_data))
    labels = torch.cat([torch.ones(len(lp_data)), torch.zeros(len(lp_adv))])
    figures = DistalResult(
        n=n,
        steps=steps,
        confidence_mean=float(prob.gather(1, y[:, None]).mean()),
        hit_rate=float((prob.argmax(1) == y).float().mean()),
        log_px_mean=float(lp_adv.mean()),
        log_px_data_mean=float(lp_data.mean()),
        log_px_data_std=float(lp_data.std()) if len(lp_data) > 1 else 0.0,
        auroc_log_px=float(roc_auc_score(labels.numpy(), torch.cat([lp_data, lp_adv]).numpy())),
        frac_below_data_p5=float((lp_adv < torch.quantile(lp_data, 0.05)).float().mean()),
    )
    return figures, x.cpu()


__all__ = [
    "DEFAULT_EPS",
    "PGDSettings",
    "adversarial_accuracy",
    "check_eps",
    "distal_report",
    "eps_key",
    "robust_accuracy",
    "robustness_comparison",
]
