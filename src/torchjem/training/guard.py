"""The divergence guard: in-memory good states, the check for a diverged step, and the rewind
(restore the last good state, reseed, back off the learning rate) with a bounded number of tries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DivergenceConfig
from ..errors import UserError
from ..utils import DATA_RANGE, frozen_eval, seed_everything
from . import distributed as ddp
from .state import TrainState

log = logging.getLogger("torchjem")


class DivergenceError(UserError, RuntimeError):
    """Training diverged more often than ``divergence.max_retries`` allows."""


ADVICE = (
    "Try a lower optim.lr, more sgld.steps, objective.energy_l2=0.1, a larger objective.data_noise (0.1 is more "
    "stable than 0.03), sgld.grad_clamp, or net.kwargs.activation=swish; runaway chains on a net with batch norm: "
    "sgld.model_mode=train (or auto), or sgld.clamp=true"
)


class DivergenceGuard:
    """Watches the diagnostics of a run's steps and rewinds ``state`` when they diverge."""

    def __init__(self, cfg: DivergenceConfig, state: TrainState, seed: int) -> None:
        self.cfg, self.state, self.seed = cfg, state, seed
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_step = -1
        self.unhealthy = 0  # checks in a row whose samples were out of health (chain_cause)

    def snapshot(self) -> None:
        """Keep the current state as the one to rewind to."""
        self._snapshot = self.state.snapshot()
        self._snapshot_step = self.state.progress.step

    def snapshot_due(self) -> bool:
        return self.state.progress.step - self._snapshot_step >= self.cfg.snapshot_every

    def after_step(self, stats: dict[str, torch.Tensor], x: torch.Tensor, due: bool) -> str | None:
        """The guard's work after an optimiser step: a check every ``check_every`` steps, or when
        ``due`` (a snapshot or checkpoint follows: then the state after the update is checked too,
        on ``x``), and a snapshot of a checked state when one is due. Returns the cause of a
        divergence (the caller rewinds with ``recover``), or None."""
        if self.state.progress.step % self.cfg.check_every and not due:
            return None
        cause = self.check(stats, x if due else None)
        if cause is None and self.snapshot_due() and not self.unhealthy:  # a good state: healthy chains too
            self.snapshot()
        return cause

    def check(self, stats: dict[str, torch.Tensor], x: torch.Tensor | None = None) -> str | None:
        """The cause of a divergence on any rank (every rank gets the same answer, so all rewind
        together), or None. ``stats`` are the last step's diagnostics (from before its update);
        with ``x`` (due before a snapshot or a checkpoint) the state after the update is checked
        too: finite weights, and finite outputs on a few inputs."""
        cause = self._local_cause(stats) or (self._state_cause(x) if x is not None else None)
        cause = cause or self.chain_cause(stats)
        if self.state.world_size == 1:
            return cause
        ranks = ddp.flagged_ranks(cause is not None, self.state.device)
        if not ranks:
            return None
        causes = ddp.all_gather_objects(cause)
        return "; ".join(f"{causes[r]} on rank {r}" for r in ranks)

    def _state_cause(self, x: torch.Tensor) -> str | None:
        jem = self.state.jem
        if not bool(torch.stack([torch.isfinite(p).all() for p in jem.parameters()]).all()):
            return "non-finite weights after the update"
        with torch.no_grad(), frozen_eval(jem):
            if not bool(torch.isfinite(jem.logits(x[:8])).all()):
                return "non-finite outputs after the update"
        return None

    def _local_cause(self, stats: dict[str, torch.Tensor]) -> str | None:
        d = self.cfg
        keys = [k for k in ("loss", "energy_data", "energy_sample") if k in stats]
        values = dict(zip(keys, torch.stack([stats[k].float() for k in keys]).tolist()))
        for k, v in values.items():
            if not np.isfinite(v):
                return f"{k} is {v}"
        if abs(values["loss"]) > d.max_loss:
            return f"|loss| = {abs(values['loss']):.3g} > divergence.max_loss = {d.max_loss:.3g}"
        for k in ("energy_data", "energy_sample"):
            if k in values and abs(values[k]) > d.max_energy:
                return f"|{k}| = {abs(values[k]):.3g} > divergence.max_energy = {d.max_energy:.3g}"
        if "energy_sample" in values and "energy_data" in values:
            gap = values["energy_sample"] - values["energy_data"]
            if abs(gap) > d.max_gap:
                return f"|energy gap| = |E(samples) - E(data)| = {abs(gap):.3g} > divergence.max_gap = {d.max_gap:.3g}"
        return None

    def chain_cause(self, stats: dict[str, torch.Tensor]) -> str | None:
        """Chain health: the cause when the samples of the checked step are out of health
        (``out_of_range`` above ``divergence.max_out_of_range``, or ``norm_ratio`` above
        ``divergence.max_norm_ratio`` with samples larger than the data range allows: root mean
        square above its half-width) at ``divergence.health_checks`` checks in a row, else None.
        Runaway chains (a batch-norm net sampled in eval mode) keep the energy gap under
        ``max_gap`` while their samples leave the data far behind."""
        d = self.cfg
        if "out_of_range" not in stats or "norm_ratio" not in stats:
            return None
        keys = ["out_of_range", "norm_ratio", "sample_rms"]
        out, ratio, rms = torch.stack([stats[k].float() if k in stats else stats["norm_ratio"].new_full((), 1e9)
                                       for k in keys]).tolist()
        bad = []
        if out > d.max_out_of_range:
            bad.append(f"{out:.0%} of sample values outside the data range > divergence.max_out_of_range = "
                       f"{d.max_out_of_range:.3g}")
        if ratio > d.max_norm_ratio and rms > (DATA_RANGE[1] - DATA_RANGE[0]) / 2:
            bad.append(f"sample norm / data norm = {ratio:.3g} > divergence.max_norm_ratio = {d.max_norm_ratio:.3g}")
        self.unhealthy = self.unhealthy + 1 if bad else 0
        if self.unhealthy < d.health_checks:
            return None
        return f"runaway chains: {' and '.join(bad)} at {self.unhealthy} checks in a row"

    def recover(self, cause: str, last: Path | None = None) -> dict[str, Any]:
        """Rewind to the last good state, reseed and back off the lr; returns the event's fields.
        Raises DivergenceError (fields in ``.event``) once ``max_retries`` rewinds are used up; its
        message says how to go on from ``last``, the run's last checkpoint (None: not written yet)."""
        p = self.state.progress
        p.retries += 1
        if p.retries > self.cfg.max_retries or self._snapshot is None:
            then = (
                f"; then continue from {last} with `jem train --resume {last.parent.parent} optim.lr=...`"
                if last is not None
                else "; no checkpoint was written yet: start again (--overwrite) with the changes"
            )
            err = DivergenceError(
                f"training diverged at step {p.step} ({cause}) after {self.cfg.max_retries} recoveries. {ADVICE}{then}"
            )
            err.event = {"cause": cause}
            raise err
        bad_step = p.step
        self.unhealthy = 0
        self.state.restore(self._snapshot)
        p.lr_scale *= self.cfg.lr_factor
        p.step_scale *= self.cfg.step_factor
        seed_everything(ddp.rank_seed(self.seed + 7919 * p.retries, self.state.rank))
        step = f", SGLD step scale {p.step_scale:.3g}" if self.cfg.step_factor != 1 else ""
        log.warning(
            "divergence at step %d (%s): rewound to step %d, reseeded, lr scale now %.3g%s (recovery %d/%d)",
            bad_step, cause, p.step, p.lr_scale, step, p.retries, self.cfg.max_retries,
        )
        return {"cause": cause, "at_step": bad_step, "rewound_to": p.step, "lr_scale": p.lr_scale,
                "step_scale": p.step_scale, "retry": p.retries}
