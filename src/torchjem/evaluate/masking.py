"""Gradient-masking checks on a robustness figure (Carlini et al. 2019, "On evaluating adversarial
robustness"; Athalye, Carlini & Wagner 2018), each computed, each with pass / flag and its numbers:

- ``unbounded``: under a budget that covers the whole input space a white-box attack (APGD-CE)
  leaves (about) no input robust;
- ``black_box``: the gradient-free Square attack breaks (almost) no input that the gradient attacks
  left robust (if it does, their gradients were a poor guide: masking);
- ``stronger_pgd``: more PGD steps, more restarts and (for a randomised model) more EOT draws do not
  raise the robust accuracy at the largest eps (a stronger attack that does worse is broken);
- ``converged``: none of those stronger attacks finds more than the suite's worst case did;
- ``loss_rises``: APGD-T raises its DLR loss on (almost) every input it attacks (it is not stuck; the
  cross-entropy saturates at exactly 0 on confidently classified inputs, so it cannot tell);
- ``logits_and_range``: the attacked output is the model's logits, whose argmax is the prediction
  (not an energy), and every input and adversarial lies in the model's own data range.

``audit`` runs the suite (``adaptive.run_suite``), these checks and a one-sentence verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from ..errors import InputError
from ..utils import DATA_RANGE, frozen_eval, model_device
from .adaptive import Counted, SuiteSettings, run_suite, unbounded_eps
from .apgd import apgd
from .results import MaskingCheck, RobustnessAudit
from .robustness import PGDSettings, robust_accuracy

LOSS_ROSE = 0.9  # the fraction of attacked inputs whose loss the attack must raise


def _check(name: str, rule: str, passed: bool, figures: dict, note: str) -> MaskingCheck:
    return MaskingCheck(name=name, rule=rule, passed=bool(passed), figures=figures, note=note)


def masking_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    result: RobustnessAudit,
    settings: SuiteSettings,
    pgd: PGDSettings | None = None,
    batch_size: int = 100,
    data_range: tuple[float, float] = DATA_RANGE,
) -> tuple[list[MaskingCheck], dict[str, float]]:
    """The checks on ``result`` (``run_suite``'s on the same ``model``, ``x``, ``y``); returns them
    and their cost {"forward", "backward", "seconds"}. ``pgd``: the PGD settings the figure started
    from (the stronger variants double its steps, restarts and EOT draws).

    Args:
        model: the classifier ``result`` attacked (a ``JEMDefence`` for JEM-n).
        x: its inputs (N, ...) in ``data_range``, on any device.
        y: their labels (N,).
        result: ``run_suite``'s audit of ``model`` on ``x``, ``y`` (an eps > 0 required).
        settings: the suite's settings (``result``'s norm, steps, EOT draws and tolerance).
        pgd: the PGD settings of the figure (default None: ``PGDSettings`` with the suite's norm).
        batch_size: inputs attacked at once (default 100).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).
    """
    s, pgd = settings, (pgd or PGDSettings(norm=settings.norm)).check()
    if pgd.norm != s.norm or max(result.eps) <= 0:
        raise InputError(f"the checks need PGD's norm to be the suite's ({pgd.norm} vs {s.norm}) and an eps > 0")
    t0, counted = time.perf_counter(), Counted(model)
    device = model_device(model)
    n, tol, eps = len(x), s.tolerance, result.eps
    checks = []

    # 1. an unbounded budget breaks (about) everything
    e_inf = unbounded_eps(s.norm, x.shape[1:], data_range)
    correct = []
    for i in range(0, n, batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        r = apgd(counted, xb, yb, eps=e_inf, norm=s.norm, steps=s.steps, eot=s.eot, data_range=data_range)
        with frozen_eval(model), torch.no_grad():
            correct.append((counted(r.x_adv).argmax(1) == yb).cpu())
    acc_inf = float(torch.cat(correct).float().mean())
    checks.append(_check(
        "unbounded", f"APGD-CE with an unbounded budget leaves at most {s.zero:g} robust", acc_inf <= s.zero,
        {"eps": e_inf, "accuracy": acc_inf, "threshold": s.zero},
        f"robust accuracy {acc_inf:.2f} at eps {e_inf:.3g} (the whole input space)",
    ))

    # 2. the black-box attack does not beat the white-box ones
    sq = result.attacks["Square"]["broken"]
    white = result.attacks["APGD-T"]["accuracy_after"]
    frac = max(sq) / n if sq else 0.0
    checks.append(_check(
        "black_box", f"Square breaks at most {tol:g} of the inputs the gradient attacks left robust", frac <= tol,
        {"square_broke": sq, "white_box_accuracy": white, "worst": result.worst, "fraction": frac},
        f"Square broke {max(sq) if sq else 0} of {n} inputs the gradient attacks missed (at most, over eps)",
    ))

    # 3-4. stronger PGD at the largest eps: not weaker than PGD, not stronger than the suite
    e_max = max(eps)
    variants = {"base": pgd, "steps_x2": replace(pgd, steps=2 * pgd.steps),
                "restarts_x2": replace(pgd, restarts=2 * pgd.restarts)}
    if result.randomised:
        variants["eot_x2"] = replace(pgd, eot=2 * pgd.eot)
    acc = {k: robust_accuracy(counted, x, y, eps=[e_max], attack=v, batch_size=batch_size, data_range=data_range,
                              progress=False).accuracy[0] for k, v in variants.items()}
    stronger = {k: a for k, a in acc.items() if k != "base"}
    # two attack runs differ by sampling noise too: two standard errors of a fraction of n, at least tol
    noise = max(tol, 2 * math.sqrt(acc["base"] * (1 - acc["base"]) / n))
    raised = {k: a for k, a in stronger.items() if a > acc["base"] + noise}
    checks.append(_check(
        "stronger_pgd", f"more steps, restarts{' and EOT draws' if result.randomised else ''} do not raise "
        f"PGD's robust accuracy by more than max({tol:g}, two standard errors)", not raised,
        {"eps": e_max, **acc, "tolerance": noise},
        f"at eps {e_max:g}: PGD {acc['base']:.2f}; " + ", ".join(f"{k} {a:.2f}" for k, a in stronger.items())
        + f" (tolerance {noise:.2f})",
    ))
    worst = result.worst[-1]
    below = min(acc.values())
    noise = max(tol, 2 * math.sqrt(worst * (1 - worst) / n))
    checks.append(_check(
        "converged", f"no stronger PGD ends more than max({tol:g}, two standard errors) below the suite's worst case",
        below >= worst - noise, {"eps": e_max, "worst": worst, "strongest_pgd": below, "tolerance": noise},
        f"at eps {e_max:g}: suite worst case {worst:.2f}, strongest PGD variant {below:.2f} (tolerance {noise:.2f})",
    ))

    # 5. the attack's loss rises. The DLR loss of APGD-T (first target) decides: the cross-entropy of a
    # confidently classified input is exactly 0 in float32 (its gradient too), so APGD-CE cannot move
    # there whatever the model; DLR is scale-invariant and does not saturate. APGD-CE's counts are shown.
    ce, dl = result.attacks["APGD-CE"], result.attacks["APGD-T"]
    use = dl if sum(dl.get("attacked", [])) else ce
    attacked, rose = sum(use["attacked"]), sum(use["loss_rose"])
    fr = rose / attacked if attacked else 1.0
    which = "APGD-T's DLR loss" if use is dl else "APGD-CE's loss"
    checks.append(_check(
        "loss_rises", f"APGD-T raises its DLR loss (APGD-CE its cross-entropy when APGD-T attacked nothing) on at "
        f"least {LOSS_ROSE:g} of the inputs it attacks", fr >= LOSS_ROSE,
        {"attacked": use["attacked"], "loss_rose": use["loss_rose"], "fraction": fr, "loss": which,
         "ce_attacked": ce["attacked"], "ce_loss_rose": ce["loss_rose"], "ce_loss_start": ce["loss_start"],
         "ce_loss_best": ce["loss_best"]},
        (f"{which} raised on {rose} of {attacked} attacked inputs (cross-entropy: {sum(ce['loss_rose'])} of "
         f"{sum(ce['attacked'])}, saturated inputs cannot rise)") if attacked else "no input was left to attack",
    ))

    # 6. the logits are attacked, in the model's own range
    with frozen_eval(model), torch.no_grad():
        out = model(x[:batch_size].to(device))
    lo, hi = result.settings["input_range"]
    shape_ok = out.ndim == 2 and out.shape[0] == min(n, batch_size)
    range_ok = data_range[0] - 1e-6 <= lo and hi <= data_range[1] + 1e-6
    checks.append(_check(
        "logits_and_range", "the attacks differentiate and query the logits that give the prediction (argmax), "
        "on inputs in the model's own data range", shape_ok and range_ok,
        {"output_shape": list(out.shape), "input_range": [lo, hi], "data_range": list(data_range)},
        f"attacked output: logits {tuple(out.shape)} (the prediction is their argmax, by construction); inputs and "
        f"adversarials in [{lo:.3g}, {hi:.3g}] for data range {list(data_range)}",
    ))
    cost = {"forward": counted.forwards, "backward": counted.backwards, "seconds": time.perf_counter() - t0}
    return checks, cost


def verdict(result: RobustnessAudit) -> str:
    """One sentence: how far the figure can be trusted, from the checks."""
    k = len(result.eps) - 1
    e, worst = result.eps[k], result.worst[k]
    pgd = f" (PGD alone: {result.pgd[k]:.2f})" if result.pgd is not None else ""
    figure = f"worst case {worst:.2f} at eps {e:g}{pgd}"
    if not result.checks:
        return f"The suite's {figure}; no gradient-masking checks were run."
    flagged = [c for c in result.checks if not c.passed]
    if not flagged:
        return (f"All {len(result.checks)} checks pass: the suite's {figure} is the figure to quote; no stronger, "
                "unbounded or gradient-free attack found what the suite missed.")
    why = {
        "black_box": "a gradient-free attack broke inputs the gradient attacks missed (masked gradients)",
        "unbounded": "even an unbounded budget leaves inputs robust (the attack cannot follow the gradient)",
        "converged": "stronger PGD found more than the suite (not converged)",
        "stronger_pgd": "stronger PGD did worse than plain PGD (a broken or noisy attack)",
        "loss_rises": "the attack's loss does not rise (stuck)",
        "logits_and_range": "the attacked output or input range is wrong",
    }
    reasons = "; ".join(why[c.name] for c in flagged)
    return (f"{len(flagged)} of {len(result.checks)} checks flag ({reasons}): the suite's {figure} is only an "
            "upper bound on the robustness, not a figure to quote as robust accuracy.")


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: Sequence[float],
    settings: SuiteSettings | None = None,
    pgd: PGDSettings | None = None,
    start: torch.Tensor | None = None,
    pgd_accuracy: Sequence[float] | None = None,
    batch_size: int = 100,
    data_range: tuple[float, float] = DATA_RANGE,
    progress: bool = True,
) -> RobustnessAudit:
    """The suite's worst case (``run_suite``, same arguments), the gradient-masking checks (unless
    ``settings.checks`` is off; their cost under ``cost["checks"]``) and the verdict.

    Args:
        model: any classifier returning logits (a ``JEMDefence`` for JEM-n).
        x: inputs (N, ...) in ``data_range``, on any device.
        y: their labels (N,).
        eps: the radii (E of them), increasing, in the data's scale.
        settings: how the suite attacks (default ``SuiteSettings()``: "standard", L-inf).
        pgd: the PGD settings the checks' stronger variants start from (default None: ``PGDSettings``
            with the suite's norm).
        start: (E, N) bool, whether each input is still robust after PGD (default: correctly classified).
        pgd_accuracy: PGD's figure per eps, recorded beside the worst case (default None).
        batch_size: inputs attacked at once (default 100).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).
        progress: show a progress bar (default True).

    Returns the ``RobustnessAudit`` with its checks and verdict.
    """
    s = (settings or SuiteSettings()).check()
    result = run_suite(model, x, y, eps=eps, settings=s, start=start, pgd_accuracy=pgd_accuracy, batch_size=batch_size,
                       data_range=data_range, progress=progress)
    if s.checks:
        result.checks, result.cost["checks"] = masking_checks(
            model, x, y, result=result, settings=s, pgd=pgd, batch_size=batch_size, data_range=data_range
        )
    result.verdict = verdict(result)
    return result


__all__ = ["LOSS_ROSE", "audit", "masking_checks", "verdict"]
