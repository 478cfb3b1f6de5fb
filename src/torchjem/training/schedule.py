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
from ..rundir import Cost
from .batches import steps_per_epoch


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


def predict_cost(cfg: Config, *, n_train: int, n_val: int = 0, inner_steps: int | None = None) -> Cost:
    """The passes a run of ``cfg`` will make, from its schedule alone (no training): for a GPU
    recipe's cost before it runs, and a cross-check of the meter (training/cost.py). Assumes no
    divergence rewind, a batch-norm-free or separate-pass net alike (passes are counted in
    examples either way), labelled data (the p(x|y) chains are one per labelled example) and
    ``train.epochs`` (or ``train.max_steps``) from the start.

    Args:
        cfg: the run's config (``train.clf_only`` gives a classifier's passes).
        n_train: training examples (``steps_per_epoch`` = n_train // batch_size, at least 1).
        n_val: validation examples, scored every ``train.eval_every`` epochs and at the end.
        inner_steps: PYLD's inner steps per outer step (default: ``sgld.inner_steps`` when
            ``sgld.kind`` is pyld, else 0).

    Returns a ``Cost`` with passes and steps filled in and no seconds.
    """
    t, o = cfg.train, cfg.objective
    per_epoch = steps_per_epoch(n_train, t.batch_size)
    total = t.max_steps if t.max_steps is not None else t.epochs * per_epoch
    inner = inner_steps if inner_steps is not None else (cfg.sgld.inner_steps if cfg.sgld.kind == "pyld" else 0)
    n, m = t.batch_size, cfg.sgld.chains or t.batch_size
    jem = not t.clf_only and (o.px > 0 or o.pxy > 0)
    cost = Cost()
    for step in range(total):
        epoch = step // per_epoch
        plan = step_plan(cfg, step, epoch, per_epoch)
        on = jem and plan.scale > 0
        n_data = n * (2 if on and cfg.data.augment and not cfg.data.augment_px else 1)
        n_samples = (m if o.px > 0 else 0) + (n if o.pxy > 0 else 0) if on else 0
        k = plan.sgld_steps if plan.sgld_steps is not None else cfg.sgld.steps
        cost.add_step(n_data, n_samples, k, inner_steps=inner, sam=plan.sam)
    if n_val:
        # at each epoch's end when due (and at the last one), plus once more at a max_steps run's end
        validations = sum(1 for e in range(1, total // per_epoch + 1)
                          if e % t.eval_every == 0 or e * per_epoch == total)
        if t.max_steps is not None:  # a max_steps run validates once more at its end
            validations += 1
        cost.add("validation", n_val * validations, "forward")
    return cost
