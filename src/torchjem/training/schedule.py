"""What each training step does: whether the p(x) / p(x|y) terms run and at what weight, whether
SAM takes its second pass, how many SGLD steps the chains take. Decided from the config and the
step and epoch alone, so that every process of a data-parallel run, and a resumed run, agrees.

The options (config.py): ``objective.px_from_epoch`` (classifier steps before that epoch: a
classifier phase in the same run, its cost counted), ``objective.px_every`` (the p(x) term on
every n-th step), ``objective.px_ramp_steps`` (its weight rising linearly from 0 after it
starts), ``optim.sam_every`` (SAM's second pass on every n-th step) and ``sgld.steps_by_epoch``
(K per epoch, the last value repeating)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class StepPlan:
    """One step: ``scale`` multiplies the p(x) and p(x|y) weights (0: a classifier step, no
    chains), ``sam`` says whether SAM takes its second pass, ``sgld_steps`` is the chains' K
    (None: the sampler's own)."""

    scale: float
    sam: bool
    sgld_steps: int | None


def step_plan(cfg: Config, step: int, epoch: int, steps_per_epoch: int) -> StepPlan:
    """The plan of optimiser step ``step`` (0-based, counted over the run) in epoch ``epoch``
    (0-based); ``steps_per_epoch`` places the start of ``objective.px_from_epoch`` in steps (the
    weight ramp counts from there).

    Examples (by hand): px_every=2 gives scale 1, 0, 1, 0, ... for steps 0, 1, 2, 3; with
    px_from_epoch=1, 100 steps per epoch and px_ramp_steps=4, steps 99, 100, 101, 103, 104 get
    0, 0.25, 0.5, 1, 1."""
    o = cfg.objective
    scale = 1.0
    if epoch < o.px_from_epoch or step % o.px_every:
        scale = 0.0
    elif o.px_ramp_steps > 0:
        since = step - o.px_from_epoch * steps_per_epoch  # steps since the terms started
        scale = min(1.0, (since + 1) / o.px_ramp_steps)
    k = cfg.sgld.steps_by_epoch
    steps = None if k is None else int(k[min(epoch, len(k) - 1)])
    sam = cfg.optim.sam_rho > 0 and step % cfg.optim.sam_every == 0
    return StepPlan(scale=scale, sam=sam, sgld_steps=steps)
