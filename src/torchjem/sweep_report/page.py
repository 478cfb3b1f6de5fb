"""The sweep report's files: sweep.json (everything the page shows, JSON-safe) and sweep.html (one
self-contained page, the heat maps embedded)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_text
from ..figures import png_img
from .axes import Axis, check, value_text
from .heatmaps import plot_heatmaps
from .record import TrialRecord
from .tables import best_setting, stable_region, summarize


def _plain(obj: Any) -> Any:
    """JSON-safe: tuples as lists, numpy scalars as numbers, NaN/inf as None, paths as strings."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}tr.bad td{background:#fdecea}
tr.warn td{background:#fff8e1}img{max-width:100%;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}
"""


def _cell(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "<td>—</td>"
    if isinstance(v, float):
        return f"<td>{v:{spec}}</td>"
    return f"<td>{html.escape(str(v))}</td>"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "<td>—</td>"
    return f"<td>{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "") + "</td>"


def render_html(doc: dict, out_dir: str | Path) -> str:
    """sweep.json's content as one self-contained page (the PNGs in ``out_dir`` embedded)."""
    out, keys = Path(out_dir), doc["keys"]
    title = html.escape(doc["title"])
    e = html.escape
    p = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head><body>"]
    p.append(f"<h1>{title}</h1>")
    p.append(f"<p class=note>{doc['n_trials']} trials over {', '.join(f'<code>{e(k)}</code>' for k in keys)}</p>")
    p += [f"<p class=note>{e(str(n))}</p>" for n in doc["notes"]]
    regions = doc["stable_region"]
    p.append("<h2>Stable region</h2>")
    p.append(f"<p><b>With recovery</b> (the divergence guard rewinds): {e(regions['with_recovery']['text'])}</p>")
    p.append(
        "<p><b>Without recovery</b> (a trial that needed a rewind counts as diverged: up to its first trouble "
        f"it is identical to a run without the guard): {e(regions['without_recovery']['text'])}</p>"
    )
    best = doc["best"]
    p.append("<h2>Best setting</h2>")
    p.append(f"<p>{e(best['text'])}</p>" if best else "<p>no setting without a diverged seed</p>")
    if doc["heatmaps"]:
        p.append("<h2>Heat maps</h2>")
        for name in doc["heatmaps"]:
            p.append(png_img(out / name, name))
    p.append("<h2>Per setting</h2><table><tr>")
    p.append("".join(f"<th>{e(k)}</th>" for k in keys))
    p.append(
        "<th>seeds</th><th>diverged</th><th>troubled</th><th>recoveries</th><th>val acc</th><th>test acc</th>"
        "<th>ECE</th><th>NLL</th><th>seconds</th></tr>"
    )
    for r in doc["summary"]:
        cls = " class=bad" if r["diverged"] else (" class=warn" if r["troubled"] else "")
        p.append(f"<tr{cls}>" + "".join(f"<td>{e(value_text(r['params'][k]))}</td>" for k in keys))
        p.append(f"<td>{r['n']}</td><td>{r['diverged']}/{r['n']}</td><td>{r['troubled']}/{r['n']}</td>")
        p.append(_cell(r["recoveries"]) + _pm(r["val_acc_mean"], r["val_acc_std"]))
        p.append(_pm(r["test_acc_mean"], r["test_acc_std"]) + _cell(r["ece_mean"]) + _cell(r["nll_mean"]))
        p.append(_cell(r["seconds_mean"], ".1f") + "</tr>")
    p.append("</table><h2>All trials</h2><table><tr><th class=l>run</th><th>#</th>")
    p.append("".join(f"<th>{e(k)}</th>" for k in keys))
    p.append(
        "<th>seed</th><th class=l>status</th><th>recoveries</th><th>first trouble step</th><th>steps</th>"
        "<th>val acc</th><th>test acc</th><th>ECE</th><th>NLL</th><th>energy gap</th><th>seconds</th>"
        "<th class=l>cause</th></tr>"
    )
    trials = sorted(map(TrialRecord.from_dict, doc["records"]), key=lambda r: (r.number is None, r.number or 0, r.run))
    for r in trials:
        cls = " class=bad" if r.diverged else (" class=warn" if r.troubled else "")
        p.append(f"<tr{cls}><td class=l>{e(str(r.run))}</td>{_cell(r.number)}")
        p.append("".join(f"<td>{e(value_text(r.params[k]))}</td>" for k in keys))
        p.append(_cell(r.seed) + f"<td class=l>{e(str(r.status))}</td>")
        p.append(_cell(r.recoveries) + _cell(r.first_trouble_step) + _cell(r.steps))
        p.append("".join(_cell(getattr(r, m)) for m in ("val_acc", "test_acc", "ece", "nll")))
        p.append(_cell(r.energy_gap, ".3g") + _cell(r.seconds, ".1f"))
        p.append(f"<td class=l>{e(str(r.cause or ''))}</td></tr>")
    p.append("</table></body></html>")
    return "\n".join(p)


def write_sweep_report(
    records: Sequence[TrialRecord],
    keys: Sequence[str],
    out_dir: str | Path,
    *,
    title: str = "torchjem sweep",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the heat-map PNGs, sweep.json (title, notes, keys, the axes of the heat maps, the
    records, the per-setting summary, the stable regions with and without recovery, the best
    setting) and sweep.html (self-contained) into ``out_dir``, each atomically.

    Args:
        records: the finished trials.
        keys: the swept config keys (each in every record's ``params``).
        out_dir: the report folder (created).
        title: the page's title.
        notes: lines shown under the title (config, budget, ...).

    Returns {"html", "json", "png_<keys>": path}; raises InputError for records or keys that do not fit."""
    keys = check(records, keys)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    pngs = plot_heatmaps(records, keys, out)
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
        "records": [r.to_dict() for r in records],
    }
    doc = _plain(doc)
    atomic_write_text(out / "sweep.json", json.dumps(doc, indent=2, allow_nan=False))
    atomic_write_text(out / "sweep.html", render_html(doc, out))
    paths = {"html": out / "sweep.html", "json": out / "sweep.json"}
    paths.update({"png_" + p.stem.removeprefix("heatmap_"): p for p in pngs})
    return paths
