"""The sweep report's files: sweep.json (everything the page shows, JSON-safe) and sweep.html (one
self-contained page, the heat maps embedded), built with the report's page builder (``report.page``:
its CSS, number format and JSON cleaning). One function per section of the page; every figure a cell
shows is printed from sweep.json's content and tagged with its JSON path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..report.page import Page, clean_json, esc, fmt, write_json, write_page
from .axes import Axis, check, value_text
from .cost import cost_summary
from .heatmaps import plot_heatmaps
from .record import TrialRecord
from .tables import best_setting, stable_region, summarize


def _pm(mean: float | None, std: float | None) -> str:
    """A mean with its sample std ("0.9110 ± 0.0012"; the std left out when there is none)."""
    return fmt(mean) + (f" ± {fmt(std)}" if mean is not None and std is not None else "")


def _regions(page: Page, doc: dict) -> None:
    regions = doc["stable_region"]
    page.h2("Stable region")
    page.add(f"<p><b>With recovery</b> (the divergence guard rewinds): {esc(regions['with_recovery']['text'])}</p>")
    page.add(
        "<p><b>Without recovery</b> (a trial that needed a rewind counts as diverged: up to its first trouble "
        f"it is identical to a run without the guard): {esc(regions['without_recovery']['text'])}</p>"
    )


def _best(page: Page, doc: dict) -> None:
    page.h2("Best setting")
    page.add(f"<p>{esc(doc['best']['text'])}</p>" if doc["best"] else "<p>no setting without a diverged seed</p>")


def _heatmaps(page: Page, doc: dict) -> None:
    if doc["heatmaps"]:
        page.h2("Heat maps")
        for name in doc["heatmaps"]:
            page.add(page.img(name, name, "wide"))


def _cost(page: Page, doc: dict) -> None:
    cost = doc.get("cost")
    if not cost:
        return
    page.h2("Cost")
    if cost["png"]:
        page.add(page.img(cost["png"], "figures against training cost", "wide"))
    else:
        page.note(f"No cost plot: {esc(cost['why_not'])}.")
    if cost["left_out"]:
        page.note(esc(cost["left_out"]) + ".")
    rows = []
    for i, r in enumerate(cost["cheapest"]):
        at = ["cost", "cheapest", i]
        params = ", ".join(f"{k}={value_text(v)}" for k, v in r["params"].items())
        rows.append([page.td(r["label"], "l"), page.cell([*at, "best"]), page.td(r["best_run"], "l"),
                     page.cell([*at, "best_units"]), page.cell([*at, "target"]), page.td(r["run"], "l"),
                     page.td(params, "l"), page.cell([*at, "value"]), page.cell([*at, "units"]),
                     page.cell([*at, "saving"])])
    if rows:
        page.table([page.th("metric", "l"), "best", page.th("best trial", "l"), "its units", "target",
                    page.th("cheapest trial reaching it", "l"), page.th("setting", "l"), "its figure", "its units",
                    "units saved (x)"], rows)
    page.note(
        "Each trial's figures against its training cost in units (forward-pass equivalents: a forward pass 1, a "
        "backward pass 2, an SGLD step's input gradient 1, per example; machine-independent), log scale, one point "
        "per trial (each seed its own); diverged trials are left out. The Pareto front joins the trials that no "
        "other trial beats on both cost and figure. Cheapest setting that reaches the target: per metric, the best "
        f"trial's figure less {esc(fmt(cost['tolerance']))} (0.3 percentage points; plus for ECE, lower being "
        "better) is the target, and the row names the cheapest trial at or past it. One trial is one seed: a "
        "setting that reaches the target on one seed may not on another (see the per-setting table)."
    )


def _per_setting(page: Page, doc: dict) -> None:
    keys = doc["keys"]
    page.h2("Per setting")
    header = [*map(esc, keys), "seeds", "diverged", "troubled", "recoveries", "val acc", "test acc", "ECE", "NLL"]
    rows = []
    for i, r in enumerate(doc["summary"]):
        at = ["summary", i]
        cells = [page.td(value_text(r["params"][k])) for k in keys] + [page.cell([*at, "n"])]
        cells += [page.td(f"{r['diverged']}/{r['n']}"), page.td(f"{r['troubled']}/{r['n']}")]
        cells += [page.cell([*at, "recoveries"]), page.td(_pm(r["val_acc_mean"], r["val_acc_std"]))]
        cells += [page.td(_pm(r["test_acc_mean"], r["test_acc_std"])), page.cell([*at, "ece_mean"])]
        cells += [page.cell([*at, "nll_mean"]), page.cell([*at, "seconds_mean"], ".1f")]
        rows.append(page.row(cells, "bad" if r["diverged"] else ("warn" if r["troubled"] else "")))
    page.table([*header, "seconds"], rows)


def _all_trials(page: Page, doc: dict) -> None:
    keys = doc["keys"]
    page.h2("All trials")
    header = [page.th("run", "l"), "#", *map(esc, keys), "seed", page.th("status", "l"), "recoveries"]
    header += ["first trouble step", "steps", "val acc", "test acc", "ECE", "NLL", "energy gap", "seconds"]
    records = [TrialRecord.from_dict(r) for r in doc["records"]]
    costed = any(r.cost_units is not None for r in records)  # (records written before costs were: no column)
    header += ["cost units"] if costed else []
    order = sorted(
        range(len(records)), key=lambda i: (records[i].number is None, records[i].number or 0, records[i].run)
    )
    rows = []
    for i in order:
        r, at = records[i], ["records", i]
        cells = [page.td(r.run, "l"), page.cell([*at, "number"])]
        cells += [page.td(value_text(r.params[k])) for k in keys]
        cells += [page.cell([*at, "seed"]), page.td(r.status, "l")]
        cells += [page.cell([*at, k]) for k in ("recoveries", "first_trouble_step", "steps")]
        cells += [page.cell([*at, k]) for k in ("val_acc", "test_acc", "ece", "nll")]
        cells += [page.cell([*at, "energy_gap"], ".3g"), page.cell([*at, "seconds"], ".1f")]
        cells += [page.cell([*at, "cost_units"])] if costed else []
        cells.append(page.td(r.cause or "", "l"))
        rows.append(page.row(cells, "bad" if r.diverged else ("warn" if r.troubled else "")))
    page.table([*header, page.th("cause", "l")], rows)


SECTIONS: list[Callable[[Page, dict], None]] = [_regions, _best, _heatmaps, _cost, _per_setting, _all_trials]


def sweep_page(doc: dict, out_dir: str | Path) -> Page:
    """sweep.json's content ``doc`` as one self-contained page (the PNGs it names in ``out_dir`` embedded)."""
    page = Page(doc["title"], out_dir, doc)
    page.note(f"{doc['n_trials']} trials over {', '.join(f'<code>{esc(k)}</code>' for k in doc['keys'])}")
    for n in doc["notes"]:
        page.note(esc(n))
    for section in SECTIONS:
        section(page, doc)
    return page


def render_html(doc: dict, out_dir: str | Path) -> str:
    """sweep.json's content as the HTML of one self-contained page (``sweep_page``)."""
    return sweep_page(doc, out_dir).render()


def write_sweep_report(
    records: Sequence[TrialRecord],
    keys: Sequence[str],
    out_dir: str | Path,
    *,
    title: str = "torchjem sweep",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the heat-map PNGs, the cost plot (when trials recorded their cost: ``cost.plot_cost``),
    sweep.json (title, notes, keys, the axes of the heat maps, the records, the per-setting summary,
    the stable regions with and without recovery, the best setting, ``cost``: ``cost.cost_summary``)
    and sweep.html (self-contained) into ``out_dir``, each atomically.

    Args:
        records: the finished trials.
        keys: the swept config keys (each in every record's ``params``).
        out_dir: the report folder (created).
        title: the page's title.
        notes: lines shown under the title (config, budget, ...).

    Returns {"html", "json", "png_<keys>": path, "png_cost"?: path}; raises InputError for records
    or keys that do not fit."""
    keys = check(records, keys)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    pngs = plot_heatmaps(records, keys, out)
    cost = cost_summary(records, out)
    doc = {
        "title": title,
        "notes": [str(n) for n in notes],
        "keys": keys,
        "n_trials": len(records),
        "axes": {k: Axis(k, [r.params[k] for r in records], bin_many=True).describe() for k in keys},
        "stable_region": {
            "with_recovery": stable_region(records, keys),
            "without_recovery": stable_region(records, keys, without_recovery=True),
        },
        "best": best_setting(records, keys),
        "summary": summarize(records, keys),
        "heatmaps": [p.name for p in pngs],
        "cost": cost,
        "records": [r.to_dict() for r in records],
    }
    doc = clean_json(doc, drop=())
    paths = {"html": out / "sweep.html", "json": write_json(out / "sweep.json", doc)}
    write_page(paths["html"], sweep_page(doc, out))
    paths.update({"png_" + p.stem.removeprefix("heatmap_"): p for p in pngs})
    if cost["png"]:
        paths["png_cost"] = out / cost["png"]
    return paths
