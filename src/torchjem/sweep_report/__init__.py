"""The sweep report: a stability study over hyper-parameters, from the trial records of `jem sweep`.

Pure: records in, files out. Each trial is a ``TrialRecord`` (record.py: the one type from the trial
to the page; ``TrialRecord.from_dict`` reads RUN_DIR/trial.json or a record of sweep.json).

A trial is *troubled* when it diverged or its divergence guard rewound at least once: up to its
first trouble a run is identical to one without the guard, so a troubled trial is one that would
have diverged without recovery. ``stable_region(..., without_recovery=True)`` uses that flag.

- record.py    ``TrialRecord``
- axes.py      the swept keys as axes (binned when a random search gave many values); record checks
- tables.py    ``summarize`` (per setting), ``best_setting``, ``stable_region``
- heatmaps.py  ``plot_heatmaps``: divergence rate and mean validation accuracy per pair of keys
- cost.py      ``plot_cost``: each trial's figures against its training cost (Pareto front);
               ``cheapest_within``: per metric the cheapest trial within 0.3 points of the best
- page.py      ``write_sweep_report``: sweep.json and the self-contained sweep.html (one function per
               section, on the reports' one page builder, ``torchjem.report.page``)
"""

from .axes import MAX_EXACT_VALUES, MAX_REGIONS, N_BINS
from .cost import cheapest_within, pareto_front, plot_cost
from .heatmaps import plot_heatmaps
from .page import render_html, sweep_page, write_sweep_report
from .record import TrialRecord
from .tables import best_setting, stable_region, summarize

__all__ = [
    "MAX_EXACT_VALUES",
    "MAX_REGIONS",
    "N_BINS",
    "TrialRecord",
    "best_setting",
    "cheapest_within",
    "pareto_front",
    "plot_cost",
    "plot_heatmaps",
    "render_html",
    "stable_region",
    "summarize",
    "sweep_page",
    "write_sweep_report",
]
