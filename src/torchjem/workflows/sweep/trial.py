"""One trial: train (or continue) its run directory, evaluate it, and record what it found as a
``TrialRecord`` in RUN_DIR/trial.json. A divergence that training gives up on is a result; the
trouble (recoveries, first step, cause) and a collapse come from the run's history."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...checkpoint import atomic_write_text
from ...config import load_config
from ...errors import InputError
from ...evaluate.calibration import calibration
from ...evaluate.classification import classification
from ...evaluate.ood import ood_metrics, ood_scores
from ...rundir import History, RunDir, RunLock
from ...sweep_report import TrialRecord
from ...training import Trainer
from ...training.guard import DivergenceError
from ...training.tensorboard import write_hparams
from ..inputs import build_ood_sets
from ..train import resolve_recipe
from .spec import SweepSpec


def run_trial(
    spec: SweepSpec, run_dir: str | Path, params: dict[str, Any], *, seed: int, progress: bool = False
) -> TrialRecord:
    """Train one trial into its run directory (or continue it from its last checkpoint), evaluate it
    and write RUN_DIR/trial.json. A run directory that already holds a trial.json (finished, but its
    result never reached the study) is not run again: its record is returned.

    Args:
        spec: the sweep (its config and fixed overrides).
        run_dir: the trial's run directory (SWEEP_DIR/trials/pNNN-sS).
        params: the trial's setting, swept key -> value.
        seed: the trial's seed.
        progress: show the training's progress bar.

    A divergence that training gives up on is a result (``diverged``); errors of the config or data
    (UserError) propagate."""
    run = RunDir(run_dir)
    RunLock(run).wait()  # re-queued while its first worker still runs it (a missed heartbeat)
    if run.trial.is_file():
        return TrialRecord.from_dict(json.loads(run.trial.read_text()))
    t0 = time.perf_counter()
    resumed = run.checkpoint("last").is_file()
    if resumed:
        trainer = Trainer.resume(run.path, progress=progress)
    else:
        cfg = load_config(resolve_recipe(spec.config), spec.trial_overrides(params, seed))
        trainer = Trainer(cfg, progress=progress, out=run.path, overwrite=True)
    try:
        final = trainer.fit()
        diverged = False
    except DivergenceError:
        final, diverged = {}, True
    cost = trainer.state.meter.fold()  # the training's (before the test evaluation below)
    complete = cost.complete  # (a resume from a checkpoint without a cost: only part of it)
    history = run.history()
    summary = history.summary()
    gap = summary.final["energy_gap"]
    record = TrialRecord(
        run=run.path.name,
        params=params,
        seed=seed,
        diverged=diverged,
        status="diverged" if diverged else "done",
        recoveries=summary.recoveries,
        first_trouble_step=summary.first_trouble_step,
        cause=summary.cause,
        energy_gap=None if diverged or gap is None or not math.isfinite(gap) else gap,
        steps=trainer.step,
        resumed=resumed,
        **({} if diverged else _figures(trainer, final)),
        seconds=time.perf_counter() - t0,  # this attempt's (a resumed run's earlier ones not)
        cost_units=cost.total_units if complete else None,  # every attempt's (kept in the checkpoints)
        cpu_s=cost.total_cpu_s if complete else None,
        wall_s=cost.total_wall_s if complete else None,
    )
    record = mark_collapse(record, history)
    atomic_write_text(run.trial, json.dumps(record.to_dict(), indent=2))
    if trainer.cfg.train.tensorboard:  # the setting and results in TensorBoard's HParams dashboard
        results = {k: getattr(record, k) for k in ("val_acc", "test_acc", "ece", "recoveries", "energy_gap")}
        write_hparams(run.tensorboard, params, {**results, "diverged": float(record.diverged)})
    return record


def mark_collapse(record: TrialRecord, history: History) -> TrialRecord:
    """``record`` with ``best_val_acc`` from ``history``, and counted as diverged (status
    "collapsed", the cause) when it finished far below that best (``History.collapse``). A run that
    gave up stays as it was."""
    record = replace(record, best_val_acc=history.summary().best_val_acc)
    why = history.collapse(record.val_acc)
    if not record.diverged and why is not None:
        record = replace(record, diverged=True, status="collapsed", cause=why)
    return record


def _figures(trainer: Trainer, final: dict[str, Any]) -> dict[str, float | None]:
    """Validation (from the end of training when it validated there) and test figures."""
    val = final if "val_acc" in final else trainer.validate()
    out: dict[str, float | None] = {"val_acc": val.get("val_acc")}
    data = trainer.data
    x, y = getattr(data, "x_test", None), getattr(data, "y_test", None)
    if x is not None and len(x):
        c = classification(trainer.jem, x, y)
        out.update(test_acc=c.accuracy, nll=c.nll, ece=calibration(trainer.jem, x, y).ece)
        out.update(_log_px_aurocs(trainer.jem, x, trainer.cfg.seed))
    return out


def _log_px_aurocs(jem: Any, x: Any, seed: int) -> dict[str, float | None]:
    """log p(x) AUROC of the test inputs ``x`` against uniform noise and against blends, the sets
    ``jem eval --ood uniform interp`` builds (``build_ood_sets``, the same seeds); None where the
    scores are not finite (a model that broke)."""
    sets, _ = build_ood_sets(["uniform", "interp"], x, seed=seed)
    s_in = ood_scores(jem, x, ["px"])["px"]
    out: dict[str, float | None] = {}
    for name, x_out in sets.items():
        s_out = ood_scores(jem, x_out, ["px"])["px"]
        try:
            out[f"auroc_{name}"] = ood_metrics(s_in, s_out)["auroc"]
        except InputError:
            out[f"auroc_{name}"] = None
    return out
