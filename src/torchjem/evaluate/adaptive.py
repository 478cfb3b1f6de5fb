"""An AutoAttack-style suite (Croce & Hein 2020) on top of PGD: APGD with the cross-entropy,
targeted APGD with the DLR loss, and the black-box Square attack, for L-inf and L2.

``run_suite`` starts from the inputs that PGD left robust (its adversarials are part of the worst
case, so the suite's figure is never above PGD's) and runs the attacks in that order, each on the
inputs still robust at each eps, as AutoAttack does. Per input the worst case over every attack is
kept: an input is robust at eps only if every adversarial found for it at any eps' <= eps is
classified correctly (one evaluation per adversarial decides, also for a randomised defence), so
curves never rise with eps. White-box attacks go through the model as given (for JEM-n the
``JEMDefence``, exact gradient or BPDA, with ``eot`` draws per gradient); Square only queries it.
Forward and backward model calls and seconds are counted per attack (``Counted``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..utils import DATA_RANGE, frozen_eval, model_device
from .apgd import apgd
from .attacks import check_norm, check_range
from .results import RobustnessAudit

ATTACKS = ("APGD-CE", "APGD-T", "Square")


@dataclass(frozen=True, kw_only=True)
class SuiteSettings:
    """How the suite attacks: ``steps`` APGD iterations (APGD-CE once, APGD-T once per target),
    ``n_targets`` (the top wrong classes of the clean logits), ``queries`` of Square per input,
    ``eot`` draws per gradient of a randomised model; the checks' ``tolerance`` (accuracy a
    stronger attack may differ by, sampling noise) and ``zero`` (the accuracy that counts as
    reaching zero under an unbounded budget); ``checks``: run the gradient-masking checks."""

    name: str = "standard"
    norm: str = "linf"
    steps: int = 100
    n_targets: int = 3
    queries: int = 1000
    eot: int = 1
    tolerance: float = 0.02
    zero: float = 0.05
    checks: bool = True

    def check(self) -> SuiteSettings:
        check_norm(self.norm)
        bad = {k: v for k, v in (("steps", self.steps), ("n_targets", self.n_targets), ("queries", self.queries),
                                 ("eot", self.eot)) if v < 1}
        if bad:
            raise InputError(f"suite settings must be >= 1, got {bad}")
        if not (0 <= self.tolerance < 1 and 0 <= self.zero < 1):
            raise InputError(f"suite tolerance and zero must be in [0, 1), got {self.tolerance}, {self.zero}")
        return self


# name -> settings (norm, steps and eot are set per command); "quick": a cheaper smoke test
SUITES = {
    "standard": SuiteSettings(),
    "quick": SuiteSettings(name="quick", steps=20, n_targets=1, queries=200),
}


def suite_settings(name: str, **overrides: Any) -> SuiteSettings:
    """The named suite with ``overrides`` (norm, eot, ...); InputError for an unknown name."""
    if name not in SUITES:
        raise InputError(f"unknown attack suite {name!r}: one of {sorted(SUITES)}")
    return SuiteSettings(**{**asdict(SUITES[name]), **overrides}).check()


class Counted(nn.Module):
    """``model`` with its calls counted: ``forwards`` and ``backwards`` (inputs through the model,
    summed; a backward is counted when a gradient reaches the model's output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = self.backwards = 0

    def _backward(self, n: int) -> Callable[[torch.Tensor], None]:
        def hook(_: torch.Tensor) -> None:
            self.backwards += n

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.forwards += len(x)
        if out.requires_grad:
            out.register_hook(self._backward(len(x)))
        return out


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with frozen_eval(model), torch.no_grad():
        return model(x).argmax(1) == y


def is_randomised(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether two forward passes of ``model`` on ``x`` (a few inputs) give different logits."""
    with frozen_eval(model), torch.no_grad():
        return not torch.equal(model(x), model(x))


def unbounded_eps(norm: str, shape: Sequence[int], data_range: tuple[float, float] = DATA_RANGE) -> float:
    """A radius whose ball (intersected with the data range) is the whole input space."""
    width = data_range[1] - data_range[0]
    return width if norm == "linf" else width * math.sqrt(math.prod(shape))


def run_suite(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: Sequence[float],
    settings: SuiteSettings | None = None,
    start: torch.Tensor | None = None,
    pgd_accuracy: Sequence[float] | None = None,
    batch_size: int = 100,
    data_range: tuple[float, float] = DATA_RANGE,
    progress: bool = True,
) -> RobustnessAudit:
    """The suite's worst case against ``model`` at each of ``eps`` (increasing), checks not included.

    Args:
        model: any classifier returning logits (a ``JEMDefence`` for JEM-n).
        x: inputs (N, ...) in ``data_range``, on any device.
        y: their labels (N,).
        eps: the radii (E of them), increasing, in the data's scale; 0 is not attacked.
        settings: how the suite attacks (default ``SuiteSettings()``: "standard", L-inf).
        start: (E, N) bool, whether each input is still robust after an earlier attack (PGD's
            ``RobustAccuracy.robust``); default: correctly classified (one evaluation).
        pgd_accuracy: that attack's figure per eps, recorded beside the worst case (default None).
        batch_size: inputs attacked (and evaluated) at once (default 100).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).
        progress: show a progress bar (default True).

    Returns a ``RobustnessAudit`` (``checks`` empty: ``masking.audit`` adds them) with, for
    APGD-CE, per eps the inputs it attacked, how many of them it raised the loss of, and the mean
    loss at the start and the best; for APGD-T the same counts of its first target's DLR loss;
    ``settings["input_range"]``: the extremes of every adversarial.
    """
    s = (settings or SuiteSettings()).check()
    eps = [float(e) for e in eps]
    if len(x) == 0 or len(x) != len(y):
        raise InputError(f"the attack suite needs as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    check_range(x, data_range)
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    counted = Counted(model)
    with frozen_eval(model), torch.no_grad():
        clean_logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    n_classes = clean_logits.shape[1]
    if start is None:
        robust = (clean_logits.argmax(1) == y).cpu()[None].repeat(len(eps), 1)
    else:
        if tuple(start.shape) != (len(eps), len(x)):
            raise InputError(f"start must have shape {(len(eps), len(x))}, got {tuple(start.shape)}")
        robust = start.bool().cpu().clone()
    others = clean_logits.detach().clone()
    others[torch.arange(len(y)), y] = -float("inf")
    targets = others.topk(min(s.n_targets, n_classes - 1), dim=1).indices  # (N, n_targets)
    lo_seen, hi_seen = float(x.min()), float(x.max())
    ce = {"attacked": [0] * len(eps), "loss_rose": [0] * len(eps), "loss_start": [None] * len(eps),
          "loss_best": [None] * len(eps)}
    dlr = {"attacked": [0] * len(eps), "loss_rose": [0] * len(eps)}  # APGD-T, its first target

    def attack_batch(
        name: str, k: int, e: float, *, xb: torch.Tensor, yb: torch.Tensor, tb: torch.Tensor
    ) -> torch.Tensor:
        """The adversarials of one attack at eps ``e`` for a batch; whether each input stays robust.

        Args:
            name: the attack, one of ``ATTACKS``.
            k: the index of ``e`` in ``eps`` (where its loss figures are recorded).
            e: the radius, > 0.
            xb: the batch's inputs (B, ...) on the model's device.
            yb: their labels (B,).
            tb: their target classes (B, n_targets) for APGD-T.

        Returns (B,) bool on the CPU, whether each input is still correctly classified.
        """
        nonlocal lo_seen, hi_seen
        if name == "APGD-CE":
            r = apgd(counted, xb, yb, eps=e, norm=s.norm, steps=s.steps, eot=s.eot, data_range=data_range)
            sums = ce["loss_start"][k] or 0.0, ce["loss_best"][k] or 0.0
            ce["attacked"][k] += len(xb)
            ce["loss_rose"][k] += int((r.loss > r.loss_start + 1e-6).sum())
            ce["loss_start"][k] = sums[0] + float(r.loss_start.sum())
            ce["loss_best"][k] = sums[1] + float(r.loss.sum())
            xa = r.x_adv
        elif name == "APGD-T":  # one target after the other, on the inputs no earlier target broke
            alive, xa = torch.ones(len(xb), dtype=torch.bool, device=xb.device), xb.clone()
            for j in range(tb.shape[1]):
                idx = alive.nonzero()[:, 0]
                if len(idx) == 0:
                    break
                r = apgd(counted, xb[idx], yb[idx], eps=e, norm=s.norm, steps=s.steps, loss="dlr",
                         target=tb[idx, j], eot=s.eot, data_range=data_range)
                xa[idx] = r.x_adv
                alive[idx[~_correct(counted, r.x_adv, yb[idx])]] = False
                if j == 0:
                    dlr["attacked"][k] += len(idx)
                    dlr["loss_rose"][k] += int((r.loss > r.loss_start + 1e-6).sum())
            lo_seen, hi_seen = min(lo_seen, float(xa.min())), max(hi_seen, float(xa.max()))
            return alive.cpu()
        else:
            from .art import square  # ART is imported only when Square runs

            xa = square(counted, xb, yb, eps=e, norm=s.norm, queries=s.queries, n_classes=n_classes,
                        batch_size=batch_size, data_range=data_range)
        lo_seen, hi_seen = min(lo_seen, float(xa.min())), max(hi_seen, float(xa.max()))
        return _correct(counted, xa, yb).cpu()

    attacks: dict[str, dict[str, Any]] = {}
    cost: dict[str, dict[str, float]] = {}
    work = [(a, k) for a in ATTACKS for k, e in enumerate(eps) if e > 0]
    bar = tqdm(total=len(work), desc=f"suite {s.name}", disable=not progress, leave=False)
    for name in ATTACKS:
        t0, f0, b0 = time.perf_counter(), counted.forwards, counted.backwards
        broken = [0] * len(eps)
        for k, e in enumerate(eps):
            if k > 0:
                robust[k] &= robust[k - 1]
            if e == 0:
                continue
            idx = robust[k].nonzero()[:, 0]
            for i in range(0, len(idx), batch_size):
                sel = idx[i : i + batch_size]
                dev = sel.to(device)
                still = attack_batch(name, k, e, xb=x[dev], yb=y[dev], tb=targets[dev])
                robust[k, sel[~still]] = False
                broken[k] += int((~still).sum())
            bar.update(1)
        for k in range(1, len(eps)):
            robust[k] &= robust[k - 1]
        attacks[name] = {"accuracy_after": robust.float().mean(1).tolist(), "broken": broken}
        cost[name] = {"forward": counted.forwards - f0, "backward": counted.backwards - b0,
                      "seconds": time.perf_counter() - t0}
    bar.close()
    for k in range(len(eps)):
        for key in ("loss_start", "loss_best"):
            ce[key][k] = ce[key][k] / ce["attacked"][k] if ce["attacked"][k] else None
    attacks["APGD-CE"].update(ce)
    attacks["APGD-T"].update(dlr)
    settings_out = {**asdict(s), "n_targets": int(targets.shape[1]), "input_range": [lo_seen, hi_seen],
                    "data_range": list(data_range)}
    return RobustnessAudit(
        suite=s.name, norm=s.norm, eps=eps, n=len(x), randomised=is_randomised(model, x[:8]),
        worst=robust.float().mean(1).tolist(), pgd=list(pgd_accuracy) if pgd_accuracy is not None else None,
        attacks=attacks, settings=settings_out, cost=cost,
    )


__all__ = ["ATTACKS", "Counted", "SUITES", "SuiteSettings", "is_randomised", "run_suite", "suite_settings",
           "unbounded_eps"]
