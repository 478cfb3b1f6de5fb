"""The training cost in the evaluation report (issue 22): each model's ``Cost`` (rundir/cost.py) as
report.json's ``models.<role>.cost``, the ratio model / baseline (report.json's ``cost_ratio``)
and the "Training cost" section of report.html.

What the figures mean: passes count examples through the network by kind and direction; units are
forward-pass equivalents (forward 1, backward 2, input backward 1; PYLD's inner steps, through the
first layer only, are listed but left out): machine-independent. CPU seconds are the training
process's CPU time (all its threads), comparable only between runs on the same machine with the
same number of threads, which a run does not record. A run that started from another's weights
(``train.init_from``) has that run's cost as ``init``: the totals include it, and say so. A run
resumed from a checkpoint written before costs were recorded was counted from that step on
(``since_step`` > 0): its figures leave out the steps before, and no ratio is given for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..rundir.cost import Cost
from .page import Page, esc

if TYPE_CHECKING:  # (schema.py imports this module)
    from .schema import EvaluationReport

# The directions each kind of pass can have, listed with zeros in report.json (so that a count a
# run did not make prints as 0, not as missing)
KIND_DIRECTIONS = {
    "data": ("forward", "backward"),
    "samples": ("forward", "backward"),
    "sgld": ("forward", "input_backward"),
    "sgld_inner": ("forward", "input_backward"),
    "sam": ("forward", "backward"),
    "validation": ("forward",),
}
KIND_NAMES = {
    "data": "data (the loss's pass over the batch)",
    "samples": "samples (the loss's pass over the p(x) / p(x|y) samples)",
    "sgld": "SGLD steps of the chains (PYLD: outer steps)",
    "sgld_inner": "PYLD inner steps (first layer only; not in units)",
    "sam": "SAM's second pass",
    "validation": "validation",
}
DIRECTION_NAMES = {"forward": "forward", "backward": "backward", "input_backward": "backward to the inputs"}


def cost_entry(cost: Cost) -> dict[str, Any]:
    """report.json's ``cost`` of one model: ``Cost.to_dict()`` with every kind's directions listed
    (zeros included), plus ``total_units``, ``total_cpu_s``, ``total_wall_s`` (this run and the
    runs it started from: equal to the run's own without ``init``) and ``complete`` (``complete``)."""
    d = cost.to_dict()
    passes = {k: {direction: cost.count(k, direction) for direction in dirs} for k, dirs in KIND_DIRECTIONS.items()}
    for k, counts in cost.passes.items():  # a kind or direction this module does not know stays as it is
        passes.setdefault(k, {}).update(counts)
    d["passes"] = passes
    d.update(total_units=cost.total_units, total_cpu_s=cost.total_cpu_s, total_wall_s=cost.total_wall_s,
             complete=cost.complete)
    return d


def cost_ratio(model: Cost | None, baseline: Cost | None) -> dict[str, Any]:
    """The ratio model / baseline of the total units and of the total CPU seconds (each run's own
    plus those of the runs it started from).

    Returns {"units": float | None, "cpu_s": float | None, "why_not": str | None}: a ratio is None
    (and ``why_not`` says why) when a cost is not recorded, covers only part of its run
    (``since_step`` > 0), or the baseline's figure is 0; the CPU ratio also when one run trained on a
    CUDA device and the other on the CPU (its seconds then measure different work)."""
    if model is None or baseline is None:
        which = " and ".join(r for r, c in (("model", model), ("baseline", baseline)) if c is None)
        return {"units": None, "cpu_s": None, "why_not": f"the {which}'s cost is not recorded"}
    partial = [r for r, c in (("model", model), ("baseline", baseline)) if not c.complete]
    if partial:
        return {"units": None, "cpu_s": None, "why_not": f"the {' and '.join(partial)}'s cost covers only the steps "
                "since a resume from a checkpoint written before costs were recorded"}
    units = model.total_units / baseline.total_units if baseline.total_units > 0 else None
    cpu = model.total_cpu_s / baseline.total_cpu_s if baseline.total_cpu_s > 0 else None
    why = None if units is not None else "the baseline's cost is 0 units"
    if (model.device_s is None) != (baseline.device_s is None):
        cpu, why = None, "one run trained on a CUDA device and the other on the CPU: their CPU seconds do not compare"
    return {"units": units, "cpu_s": cpu, "why_not": why}


def headline_cost(report: EvaluationReport, role: str) -> dict[str, Any] | None:
    """The cost figures of ``headline``: {"units", "cpu_s" (totals, the runs it started from
    included), "includes_init", "since_step", "ratio"?: {"units", "cpu_s"} (the model's, when a
    baseline gives one)}; None when the run's cost is not recorded. KeyError for an unknown role."""
    cost = report.models[role].cost
    if cost is None:
        return None
    out: dict[str, Any] = {"units": cost.total_units, "cpu_s": cost.total_cpu_s, "includes_init": cost.init is not None,
                           "since_step": cost.since_step}
    if role == "model" and "baseline" in report.models:
        r = cost_ratio(cost, report.models["baseline"].cost)
        if r["units"] is not None:
            out["ratio"] = {"units": r["units"], "cpu_s": r["cpu_s"]}
    return out


def headline_cost_text(h: dict[str, Any] | None) -> str:
    """``headline_cost``'s figures as one line: "cost: U units, C CPU s (R x baseline units, R' x
    its CPU s)"; "cost: not recorded" for None."""
    if h is None:
        return "cost: not recorded"
    text = f"cost: {h['units']:,} units, {h['cpu_s']:.1f} CPU s"
    if h.get("includes_init"):
        text += " (with the run it started from)"
    if h.get("since_step"):
        text += f" (counted from step {h['since_step']} only)"
    r = h.get("ratio")
    if r:
        cpu = f", {r['cpu_s']:.2f} x its CPU s" if r.get("cpu_s") is not None else ""
        text += f" ({r['units']:.2f} x baseline units{cpu})"
    return text


def _label(report: EvaluationReport, role: str) -> str:
    m = report.models[role]
    return f"{esc(m.label or role)} <small>({esc(m.kind or '')})</small>"


def training_cost(page: Page, report: EvaluationReport) -> None:
    """Per model: passes by kind and direction, units, CPU, wall and device seconds, steps (and the
    totals with the run it started from); "not recorded" for a run without a cost; with a baseline,
    the ratio model / baseline of units and CPU seconds."""
    roles = list(report.models)
    if not roles:
        return
    page.h2("Training cost")
    costs = {r: report.models[r].cost for r in roles}

    def row(name: str, sub: list[Any]) -> list[str]:
        cells = [page.cell(["models", r, "cost", *sub]) if costs[r] is not None else page.td("not recorded")
                 for r in roles]
        return [page.td(name, "l"), *cells]

    rows = []
    for kind, dirs in KIND_DIRECTIONS.items():
        for d in dirs:
            if any(c is not None and c.count(kind, d) for c in costs.values()):
                rows.append(row(f"{KIND_NAMES[kind]}: {DIRECTION_NAMES[d]} (examples)", ["passes", kind, d]))
    rows += [row("units (forward-pass equivalents)", ["units"]), row("CPU seconds", ["cpu_s"]),
             row("wall seconds", ["wall_s"])]
    if any(c is not None and c.device_s is not None for c in costs.values()):
        rows.append(row("device seconds (CUDA)", ["device_s"]))
    rows.append(row("optimiser steps counted", ["steps"]))
    if any(c is not None and c.since_step for c in costs.values()):
        rows.append(row("counted from step", ["since_step"]))
    if any(c is not None and c.init is not None for c in costs.values()):
        rows += [row("run it started from (train.init_from): units", ["init", "units"]),
                 row("run it started from: CPU seconds", ["init", "cpu_s"]),
                 row("total units, this run and the run it started from", ["total_units"]),
                 row("total CPU seconds, this run and the run it started from", ["total_cpu_s"])]
    page.table([page.th("", "l"), *(page.th(_label(report, r)) for r in roles)], rows)
    for r, c in costs.items():
        if c is None:
            page.note(f"{_label(report, r)}: cost not recorded (a run trained before costs were recorded, or an "
                      "imported checkpoint).")
        elif not c.complete:
            since = c.since_step if c.since_step else (c.init.since_step if c.init is not None else 0)
            whose = "" if c.since_step else "the run it started from was "
            page.note(f"{_label(report, r)}: <b>partial</b>: {whose}resumed from a checkpoint written before costs "
                      f"were recorded, so its figures cover only the steps from step {esc(since)} on; no ratio is "
                      "given for it.")
    if "model" in report.models and "baseline" in report.models:
        ratio = page.value(["cost_ratio"]) or {}
        if ratio.get("units") is not None:
            page.table([page.th("model / baseline", "l"), page.th("ratio")], [
                [page.td("units (totals)", "l"), page.cell(["cost_ratio", "units"])],
                [page.td("CPU seconds (totals)", "l"), page.cell(["cost_ratio", "cpu_s"])],
            ])
        if ratio.get("why_not"):
            page.note(f"No ratio{' of CPU seconds' if ratio.get('units') is not None else ''}: "
                      f"{esc(ratio['why_not'])}.")
    page.note(
        "Passes count examples through the network (one example once), so runs of different batch sizes compare. "
        "Units weigh a forward pass 1, a backward pass to the parameters 2 and a backward pass to the inputs "
        "only (an SGLD step's gradient) 1; PYLD's inner steps run the first layer only and are left out. Units "
        "are machine-independent. CPU seconds are the training process's CPU time over all its threads: they "
        "compare only between runs on the same machine with the same number of threads (neither is recorded "
        "with a run, so this page cannot check it); wall seconds depend on the machine's load too; device "
        "seconds are the CUDA time of the training steps. All are summed over the run's sessions (a resume "
        "adds to the checkpoint's figures). Totals and ratios include the cost of the run a model started from "
        "(<code>train.init_from</code>) when it was recorded, and say so above."
    )
