"""What a sweep's settings cost against what they reach (issue 22): each trial's metrics against its
training cost in units (forward-pass equivalents, rundir/cost.py: machine-independent), one point
per trial, the Pareto front marked; and, per metric, the cheapest trial that comes within
``TOLERANCE`` of the best trial's figure.

Trials that diverged (gave up or collapsed) are left out: they reach no figure. Trials without a
recorded cost (trial.json written before costs were recorded, or resumed from a checkpoint
without one) are left out and counted; with fewer than two trials left there is no plot.
Plots use matplotlib's object API (``Figure``; no pyplot), written by ``figures.save_png``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..figures import save_png
from .record import TrialRecord

# (record field, label, higher is better): what a trial evaluates (workflows/sweep/trial.py)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("test_acc", "test accuracy", True),
    ("val_acc", "validation accuracy", True),
    ("ece", "ECE", False),
    ("auroc_uniform", "log p(x) AUROC, uniform noise", True),
    ("auroc_interp", "log p(x) AUROC, blends (interp)", True),
)
TOLERANCE = 0.003  # "reaches the target": within 0.3 percentage points of the best trial's figure
COST_PNG = "cost_vs_metrics.png"


def _value(r: TrialRecord, field: str) -> float | None:
    v = getattr(r, field)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def costed(records: Sequence[TrialRecord]) -> tuple[list[TrialRecord], str | None]:
    """The trials a cost plot shows (not diverged, with a recorded cost > 0) and a note on those left
    out (None when none was)."""
    ok = [r for r in records if not r.diverged]
    shown = [r for r in ok if r.cost_units is not None and r.cost_units > 0]
    missing = len(ok) - len(shown)
    note = None
    if missing:
        note = (f"{missing} of {len(ok)} trials that did not diverge have no recorded cost (trials run before costs "
                "were recorded, or resumed from a checkpoint without one): left out of the cost plot and table")
    return shown, note


def pareto_front(points: Sequence[tuple[float, float]], *, higher_better: bool = True) -> list[int]:
    """The indices of ``points`` (cost, value) on the Pareto front, by increasing cost: those that no
    other point beats, i.e. none costs at most as much and has at least as good a value with one of
    the two strictly better. Equal points are all on the front."""
    sign = 1.0 if higher_better else -1.0
    front = []
    for i, (c, v) in enumerate(points):
        beaten = any(c2 <= c and sign * v2 >= sign * v and (c2 < c or sign * v2 > sign * v)
                     for j, (c2, v2) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1]))


def cheapest_within(records: Sequence[TrialRecord], tolerance: float = TOLERANCE) -> list[dict[str, Any]]:
    """Per metric of ``METRICS`` that some costed trial has: the best trial, the target (its figure
    minus ``tolerance``, plus for a lower-is-better metric such as ECE), and the cheapest trial (in
    units) that reaches the target.

    Returns rows {"metric", "label", "higher_better", "best", "best_run", "best_units", "target",
    "run", "params", "value", "units", "cpu_s", "saving"} (``saving``: the best trial's units / the
    cheapest's, >= 1), in ``METRICS`` order; ties in cost go to the better figure."""
    shown, _ = costed(records)
    rows = []
    for field, label, higher in METRICS:
        have = [(r, v) for r in shown if (v := _value(r, field)) is not None]
        if not have:
            continue
        sign = 1.0 if higher else -1.0
        best, best_v = max(have, key=lambda rv: (sign * rv[1], -rv[0].cost_units))
        target = best_v - sign * tolerance
        reach = [(r, v) for r, v in have if sign * v >= sign * target]
        cheap, cheap_v = min(reach, key=lambda rv: (rv[0].cost_units, -sign * rv[1]))
        rows.append({
            "metric": field, "label": label, "higher_better": higher, "best": best_v, "best_run": best.run,
            "best_units": best.cost_units, "target": target, "run": cheap.run, "params": dict(cheap.params),
            "value": cheap_v, "units": cheap.cost_units, "cpu_s": cheap.cpu_s,
            "saving": best.cost_units / cheap.cost_units,
        })
    return rows


def plot_cost(records: Sequence[TrialRecord], out_dir: str | Path) -> Path | None:
    """One panel per metric of ``METRICS`` that the costed trials have: the metric against the cost
    in units (log scale), one point per trial, the Pareto front as a line with its points ringed.
    Returns the PNG's path (``out_dir/COST_PNG``), or None with fewer than two costed trials."""
    shown, _ = costed(records)
    panels = [(f, label, higher) for f, label, higher in METRICS
              if sum(_value(r, f) is not None for r in shown) >= 2]
    if len(shown) < 2 or not panels:
        return None
    fig = Figure(figsize=(4.6 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (field, label, higher) in zip(axes, panels):
        pts = [(float(r.cost_units), v) for r in shown if (v := _value(r, field)) is not None]
        ax.scatter([c for c, _ in pts], [v for _, v in pts], s=22, color="#4477aa", alpha=0.8, label="trial")
        front = pareto_front(pts, higher_better=higher)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-o", color="#cc3311", mfc="none",
                ms=9, lw=1.2, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("training cost (units: forward-pass equivalents)")
        ax.set_ylabel(label + ("" if higher else " (lower is better)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("each trial's figure against its training cost (diverged trials left out)", fontsize=9)
    return save_png(fig, Path(out_dir) / COST_PNG)


def cost_summary(records: Sequence[TrialRecord], out_dir: str | Path) -> dict[str, Any]:
    """sweep.json's ``cost``: {"png": the plot's file name or None, "why_not": why there is none
    (or None), "left_out": the note on trials without a cost (or None), "tolerance", "cheapest":
    ``cheapest_within``'s rows}; writes the plot into ``out_dir``."""
    shown, left_out = costed(records)
    png = plot_cost(records, out_dir)
    why = None
    if png is None and not shown:
        why = "no trial that did not diverge has a recorded cost (trial.json files written before costs were recorded)"
    elif png is None:
        why = "fewer than two trials with a recorded cost have a figure: nothing to compare"
    return {"png": png.name if png is not None else None, "why_not": why, "left_out": left_out,
            "tolerance": TOLERANCE, "cheapest": cheapest_within(records)}
