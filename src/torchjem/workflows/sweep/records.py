"""A sweep's results: the record of every finished trial, and the report written from them."""

from __future__ import annotations

from pathlib import Path

from ...config import load_config
from ...errors import RunDirError
from ...rundir import COLLAPSE, RunDir
from ...sweep_report import TrialRecord, write_sweep_report
from ..train import resolve_recipe
from .open import Sweep
from .trial import mark_collapse


def sweep_records(sweep: Sweep) -> list[TrialRecord]:
    """The record of every finished trial (the latest per run directory), in run order."""
    latest: dict[str, TrialRecord] = {}
    for attrs in sweep.study.finished():
        record = TrialRecord.from_dict(attrs)
        run = RunDir(sweep.folder.trial(record.run))
        if "best_val_acc" not in attrs and run.metrics.is_file():  # recorded before collapses were
            record = mark_collapse(record, run.history())
        latest[record.run] = record
    return [latest[k] for k in sorted(latest)]


def report_sweep(sweep: Sweep) -> dict[str, Path]:
    """Write SWEEP_DIR/report/sweep.html and sweep.json from the finished trials; returns
    {"html", "json", "png_<keys>": path}. Raises RunDirError when no trial has finished."""
    records = sweep_records(sweep)
    spec = sweep.spec
    if not records:
        raise RunDirError(f"sweep {str(sweep.path)!r} has no finished trial yet")
    cfg = load_config(resolve_recipe(spec.config), spec.overrides)
    t = cfg.train
    budget = f"{t.max_steps} steps" if t.max_steps is not None else f"{t.epochs} epochs"
    notes = [
        f"config {spec.config or '(defaults)'} {' '.join(spec.overrides)}".rstrip(),
        f"budget per trial: {budget} of batch {t.batch_size} on {cfg.data.name}; seeds {spec.seeds}; "
        f"divergence recovery: up to {cfg.divergence.max_retries} rewinds (lr x{cfg.divergence.lr_factor} each)",
        f"{len(records)} of {spec.n_runs()} trials finished",
        f"diverged: training gave up after its recoveries, or finished below {COLLAPSE} x its best validation "
        "accuracy (collapsed: the chains ran away without tripping a divergence check)",
    ]
    title = f"torchjem sweep: {sweep.path.name}"
    return write_sweep_report(records, spec.keys, sweep.folder.report, title=title, notes=notes)
