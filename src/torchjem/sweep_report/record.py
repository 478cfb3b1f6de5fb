"""A trial's record: what one `jem sweep` trial (a run directory) found.

One type from the trial to the page: ``workflows.sweep`` writes it to RUN_DIR/trial.json and to the
study's user attributes (``to_dict``: the JSON shape of both), the sweep report reads it back
(``from_dict``, also for records written before this type existed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

# Where a trial sits in the study: known once the study holds it, absent from RUN_DIR/trial.json
_STUDY_ONLY = ("number", "point")
# The training cost and the log p(x) AUROCs: absent when not recorded (records written before they
# were), so that such a record keeps its JSON shape
_COST = ("cost_units", "cpu_s", "wall_s", "auroc_uniform", "auroc_interp")


@dataclass(frozen=True)
class TrialRecord:
    """One trial: a setting of the swept keys on one seed, trained into its run directory.

    ``run``: the run directory's name (``pNNN-sS``); ``params``: swept key -> value; ``seed``;
    ``diverged``: training gave up after its recoveries, or collapsed; ``status``: ``done``,
    ``diverged`` (gave up) or ``collapsed`` (finished below COLLAPSE x its best validation accuracy,
    counted as diverged); ``recoveries``: rewinds of the divergence guard; ``first_trouble_step``: the
    step of the first rewind or of giving up; ``cause``: why it gave up or collapsed; ``val_acc``,
    ``test_acc``, ``ece``, ``nll``: of the final model (None when it gave up, or without a test split);
    ``energy_gap``: E(samples) - E(data) in the last logged window; ``best_val_acc``: the best
    validation accuracy of its epochs; ``steps``: optimiser steps done; ``seconds``: wall seconds of the
    attempt that finished it; ``resumed``: whether it continued a killed attempt; ``cost_units``,
    ``cpu_s``, ``wall_s``: the training cost of the whole run (every attempt; rundir/cost.py: units
    are forward-pass equivalents, machine-independent; None in records written before costs were
    recorded, or for a run resumed from a checkpoint without a cost); ``auroc_uniform``,
    ``auroc_interp``: the final model's log p(x) OOD AUROC, test set against uniform noise and against
    blends of two test inputs (``jem eval --ood uniform interp``'s sets and seeds: the trial's seed
    and seed + 1; None without a test split, or in records written before they were); ``number``: the Optuna trial
    number; ``point``: the setting's index (NNN)."""

    run: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    diverged: bool = False
    status: str = "done"
    recoveries: int = 0
    first_trouble_step: int | None = None
    cause: str | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    ece: float | None = None
    nll: float | None = None
    energy_gap: float | None = None
    best_val_acc: float | None = None
    steps: int | None = None
    seconds: float | None = None
    resumed: bool = False
    cost_units: int | None = None
    cpu_s: float | None = None
    wall_s: float | None = None
    auroc_uniform: float | None = None
    auroc_interp: float | None = None
    number: int | None = None
    point: int | None = None

    def __post_init__(self) -> None:
        if self.status == "diverged" and not self.diverged:  # the status says it: count it as diverged
            object.__setattr__(self, "diverged", True)

    @property
    def troubled(self) -> bool:
        """Diverged or needed a recovery: up to its first trouble a run is identical to one without
        the guard, so a troubled trial is one that would have diverged without recovery."""
        return self.diverged or (self.recoveries or 0) > 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of RUN_DIR/trial.json and of the study's user attributes (``number`` and
        ``point`` only once known, the cost and AUROC fields only when recorded)."""
        out = dataclasses.asdict(self)
        for key in (*_STUDY_ONLY, *_COST):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        """Read a record's JSON (``to_dict``'s shape; missing fields take their defaults, unknown
        keys are ignored). Raises InputError without ``run`` or a ``params`` dict."""
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or "run" not in data:
            raise InputError(f"trial record {data!r}: expected a dict with 'run' and a 'params' dict")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("recoveries") is None:  # an old record without the guard's count
            values["recoveries"] = 0
        return cls(**values)
