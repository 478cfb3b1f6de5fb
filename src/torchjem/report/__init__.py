"""The evaluation report: report.json (every figure), report.html (self-contained: the PNGs are
embedded) and the PNGs themselves, with one column per model (the run and its baseline).

``write_report(report, out_dir)`` takes the typed ``EvaluationReport`` that
``torchjem.workflows.eval.evaluate_run`` builds and leaves it as it is. Modules:

- ``schema``: the typed report (``EvaluationReport``, ``ModelReport``, ``DataInfo``, ``ReportSettings``);
- ``plots``: every PNG (reliability, OOD histograms, sample grids, robustness curves, dynamics);
- ``page``: the HTML page builder shared with the sweep report (CSS, number format, JSON cleaning);
- ``sections``: one function per section of report.html.

Every number the HTML shows is printed from report.json's content, and its table cell names its
JSON path (``data-key``), so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

from ..rundir.layout import REPORT_HTML, REPORT_JSON
from .page import Page, clean_json, fmt, get_path, write_json, write_page
from .plots import model_plots, plot_curves, plot_dynamics, plot_ood_histograms, plot_reliability, save_samples
from .schema import DataInfo, EvaluationReport, ModelReport, ReportSettings, SideReport
from .sections import SECTIONS


def report_page(report: EvaluationReport, doc: dict, out_dir: str | Path) -> Page:
    """The report as one self-contained HTML page: ``doc`` is report.json's content (what the
    cells print), the PNGs it names in ``out_dir`` are embedded."""
    page = Page(doc.get("title") or "torchjem evaluation", out_dir, doc)
    for section in SECTIONS:
        section(page, report)
    page.note(f"Every figure on this page is in {REPORT_JSON} (a cell's <code>data-key</code> is its path).")
    return page


def write_report(report: EvaluationReport, out_dir: str | Path) -> dict[str, Path]:
    """Write the PNGs, report.json and report.html into ``out_dir`` (created if needed), each
    atomically; ``report`` is not changed. Returns {"json", "html", "<role>_<figure>": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clash = set(report.side) & set(report.models)
    if clash:
        raise ValueError(f"side studies named like models: {sorted(clash)}")
    png: dict = {role: model_plots(m, role, out) for role, m in report.models.items()}
    for k, side in report.side.items():  # (a side study's key may not be a role)
        png[k] = {role: model_plots(m, f"{k}_{role}", out) for role, m in side.report.models.items()}
    doc = clean_json(report.to_dict(png))
    paths = {f"{role}_{key}": out / name for role in report.models for key, name in png[role].items()}
    paths.update({f"{k}_{role}_{key}": out / name for k in report.side for role, names in png[k].items()
                  for key, name in names.items()})
    paths["json"] = write_json(out / REPORT_JSON, doc)
    paths["html"] = out / REPORT_HTML
    write_page(paths["html"], report_page(report, doc, out))
    return paths


__all__ = [
    "DataInfo",
    "EvaluationReport",
    "ModelReport",
    "ReportSettings",
    "SideReport",
    "clean_json",
    "fmt",
    "get_path",
    "plot_curves",
    "plot_dynamics",
    "plot_ood_histograms",
    "plot_reliability",
    "report_page",
    "save_samples",
    "write_report",
]
