"""The sweep report: a stability study over hyper-parameters, from the trial records of `jem sweep`.

Pure: records in, files out. Each trial record is a plain dict (see ``torchjem.workflows.sweep``);
this module reads ``params`` (the swept keys), ``diverged`` (or ``status == "diverged"``),
``recoveries``, ``seed``, ``val_acc``, ``test_acc``, ``ece``, ``nll``, ``energy_gap``,
``seconds``, and for the trial table ``run``, ``number``, ``status``, ``steps``,
``first_trouble_step`` and ``cause``. Missing optional fields read as None (recoveries as 0).

A trial is *troubled* when it diverged or its divergence guard rewound at least once: up to its
first trouble a run is identical to one without the guard, so a troubled trial is one that would
have diverged without recovery. ``stable_region(..., without_recovery=True)`` uses that flag.

Plots use matplotlib's object API (``Figure`` + ``FigureCanvasAgg``; no pyplot), so importing
this module leaves the user's matplotlib backend as it is.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .checkpoint import atomic_write_text
from .errors import InputError
from .figures import png_img, save_png

MAX_EXACT_VALUES = 8  # a numeric key with more distinct values (random / TPE search) is binned
N_BINS = 5
MAX_REGIONS = 2_000_000  # above this many candidate regions, stable_region bins like the heat maps
_CHUNK = 250_000


# -- records ----------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _diverged(r: dict) -> bool:
    return bool(r.get("diverged")) or r.get("status") == "diverged"


def _troubled(r: dict) -> bool:
    return _diverged(r) or (r.get("recoveries") or 0) > 0


def _check(records: Sequence[dict], keys: Iterable[str]) -> list[str]:
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise InputError(f"keys: expected distinct swept config keys (strings), got {keys!r}")
    for r in records:
        params = r.get("params") if isinstance(r, dict) else None
        if not isinstance(params, dict):
            raise InputError(f"trial record {r!r}: expected a dict with a 'params' dict")
        missing = [k for k in keys if k not in params]
        if missing:
            raise InputError(f"trial {r.get('run')!r}: params lack the swept keys {missing}")
    return keys


def _setting(r: dict, keys: list[str]) -> tuple:
    return tuple(r["params"][k] for k in keys)


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and _is_number(v) and math.isfinite(v)]


def _mean(values: Iterable[Any]) -> float | None:
    v = _finite(values)
    return float(np.mean(v)) if v else None


def _std(values: Iterable[Any]) -> float | None:
    """Sample standard deviation (ddof=1); None with fewer than two values."""
    v = _finite(values)
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


def _num(v: Any) -> str:
    """A swept value in words: 0.003, 1, 1e-05, adam."""
    if _is_number(v):
        return f"{float(v):g}" if isinstance(v, (float, np.floating)) else str(int(v))
    return str(v)


class _Axis:
    """One swept key laid out as positions 0..size-1: its sorted distinct values, or (``bin_many``
    and more than MAX_EXACT_VALUES numeric values) N_BINS bins, log-spaced when every value is
    positive and they span more than 10x, else linear."""

    def __init__(self, key: str, values: Iterable[Any], bin_many: bool) -> None:
        distinct = list(dict.fromkeys(values))
        self.key = key
        self.numeric = all(_is_number(v) for v in distinct)
        if self.numeric:
            self.values = sorted(distinct, key=float)
        else:
            self.values = sorted(distinct, key=lambda v: (type(v).__name__, str(v)))
        self.binned = bin_many and self.numeric and len(self.values) > MAX_EXACT_VALUES
        self.edges: list[float] | None = None
        if self.binned:
            lo, hi = float(self.values[0]), float(self.values[-1])
            log = lo > 0 and hi / lo > 10
            edges = np.geomspace(lo, hi, N_BINS + 1) if log else np.linspace(lo, hi, N_BINS + 1)
            self.edges = [float(e) for e in edges]
            self.log = log
            where = np.clip(np.searchsorted(edges, [float(v) for v in self.values], side="right") - 1, 0, N_BINS - 1)
            self.position = {v: int(b) for v, b in zip(self.values, where)}
            self.labels = [f"{edges[i]:.2g}–{edges[i + 1]:.2g}" for i in range(N_BINS)]
        else:
            self.log = False
            self.position = {v: i for i, v in enumerate(self.values)}
            self.labels = [_num(v) for v in self.values]
        self.size = len(self.labels)

    def options(self) -> list[tuple[int, int]]:
        """The candidate intervals (first, last position): every interval of a numeric key; one
        value or all of them for a categorical one."""
        n = self.size
        if self.numeric:
            return [(i, j) for i in range(n) for j in range(i, n)]
        return [(i, i) for i in range(n)] + ([(0, n - 1)] if n > 1 else [])

    def describe(self) -> dict:
        return {"values": list(self.values), "labels": self.labels, "binned": self.binned, "edges": self.edges}


# -- tables -----------------------------------------------------------------------------------
def summarize(records: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """One row per setting (distinct values of ``keys``), aggregated over its seeds, in the order
    of the swept values. Accuracies, ECE, NLL and energy gap are over the non-diverged seeds (None
    when all diverged); the std is the sample std (ddof=1; None with one such seed); seconds are
    over all seeds. ``troubled``: seeds that diverged or needed a recovery."""
    keys = _check(records, keys)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(_setting(r, keys), []).append(r)
    axes = [_Axis(k, [s[i] for s in groups], bin_many=False) for i, k in enumerate(keys)]
    order = sorted(groups, key=lambda s: tuple(ax.position[v] for ax, v in zip(axes, s)))
    rows = []
    for s in order:
        rs = groups[s]
        ok = [r for r in rs if not _diverged(r)]
        n, d = len(rs), len(rs) - len(ok)
        row: dict[str, Any] = {
            "params": dict(zip(keys, s)),
            "n": n,
            "seeds": sorted((r.get("seed") for r in rs), key=lambda x: (not _is_number(x), x if _is_number(x) else 0)),
            "diverged": d,
            "divergence_rate": d / n,
            "troubled": sum(_troubled(r) for r in rs),
            "recoveries": sum(int(r.get("recoveries") or 0) for r in rs),
        }
        for m in ("val_acc", "test_acc"):
            row[f"{m}_mean"] = _mean(r.get(m) for r in ok)
            row[f"{m}_std"] = _std(r.get(m) for r in ok)
        for m in ("ece", "nll", "energy_gap"):
            row[f"{m}_mean"] = _mean(r.get(m) for r in ok)
        row["seconds_mean"] = _mean(r.get("seconds") for r in rs)
        rows.append(row)
    return rows


def best_setting(records: Sequence[dict], keys: Sequence[str]) -> dict | None:
    """The setting with the highest mean val accuracy among those where no seed diverged (ties:
    higher mean test accuracy, then more seeds); None when there is none."""
    rows = [r for r in summarize(records, keys) if r["diverged"] == 0 and r["val_acc_mean"] is not None]
    if not rows:
        return None

    def rank(r: dict) -> tuple:
        test = r["test_acc_mean"]
        return (r["val_acc_mean"], -math.inf if test is None else test, r["n"])

    row = max(rows, key=rank)
    out = {k: row[k] for k in ("params", "n", "troubled", "val_acc_mean", "val_acc_std", "test_acc_mean")}
    out.update({k: row[k] for k in ("test_acc_std", "ece_mean", "nll_mean", "seconds_mean")})
    acc = f"val acc {row['val_acc_mean']:.4f}" + (
        f" ± {row['val_acc_std']:.4f}" if row["val_acc_std"] is not None else ""
    )
    if row["test_acc_mean"] is not None:
        acc += f", test acc {row['test_acc_mean']:.4f}"
    seeds = f"{row['n']} seed" + ("s" if row["n"] != 1 else "")
    trouble = f"; {row['troubled']} needed a recovery" if row["troubled"] else ""
    params = ", ".join(f"{k} = {_num(v)}" for k, v in row["params"].items())
    out["text"] = f"{params}: {acc} over {seeds} (none diverged{trouble})"
    return out


# -- the stable region ------------------------------------------------------------------------
def _search(records: Sequence[dict], keys: list[str], axes: list[_Axis], bad_of) -> tuple[tuple, ...] | None:
    """The (first, last) positions per key of the best region: no bad trial, then most settings,
    most trials, highest mean val accuracy, most grid cells (the widest box: its edges stop at a
    bad trial, not where the trials happen to thin out). Box sums come
    from d-dimensional prefix sums, so each candidate costs 2^d look-ups."""
    shape = tuple(ax.size for ax in axes)
    settings = np.zeros(shape, np.int64)
    trials, bad, acc_n = (np.zeros(shape, np.int64) for _ in range(3))
    acc_sum = np.zeros(shape)
    seen = set()
    for r in records:
        s = _setting(r, keys)
        cell = tuple(ax.position[v] for ax, v in zip(axes, s))
        if s not in seen:
            seen.add(s)
            settings[cell] += 1
        trials[cell] += 1
        bad[cell] += bad_of(r)
        v = r.get("val_acc")
        if not _diverged(r) and v is not None and math.isfinite(v):
            acc_sum[cell] += v
            acc_n[cell] += 1

    def prefix(a: np.ndarray) -> np.ndarray:
        p = np.zeros(tuple(n + 1 for n in shape), a.dtype)
        c = a
        for ax in range(len(shape)):
            c = np.cumsum(c, axis=ax)
        p[tuple(slice(1, None) for _ in shape)] = c
        return p

    sums = [prefix(a) for a in (settings, trials, bad, acc_sum, acc_n)]
    opts = [np.array(ax.options(), np.int64) for ax in axes]
    sizes = [len(o) for o in opts]
    total = math.prod(sizes)
    corners = list(itertools.product((0, 1), repeat=len(axes)))
    best: tuple | None = None
    for start in range(0, total, _CHUNK):
        flat = np.arange(start, min(total, start + _CHUNK))
        idx = np.unravel_index(flat, sizes)
        lo = [o[i, 0] for o, i in zip(opts, idx)]
        hi = [o[i, 1] + 1 for o, i in zip(opts, idx)]
        box = []
        for p in sums:
            acc = np.zeros(len(flat), p.dtype)
            for c in corners:
                sign = 1 if (len(axes) - sum(c)) % 2 == 0 else -1
                acc += sign * p[tuple(h if ci else lo_ for ci, lo_, h in zip(c, lo, hi))]
            box.append(acc)
        s, t, b, a_sum, a_n = box
        ok = np.flatnonzero((b == 0) & (s > 0))
        if not len(ok):
            continue
        mean = np.where(a_n[ok] > 0, np.round(a_sum[ok] / np.maximum(a_n[ok], 1), 9), -np.inf)
        cells = np.prod(np.stack([h[ok] - lo_[ok] for lo_, h in zip(lo, hi)]), axis=0)
        i = ok[np.lexsort((-flat[ok], cells, mean, t[ok], s[ok]))[-1]]
        j = int(np.searchsorted(ok, i))
        rank = (int(s[i]), int(t[i]), float(mean[j]), int(cells[j]), -int(flat[i]))
        if best is None or rank > best[0]:
            best = (rank, tuple((int(a[i]), int(h[i]) - 1) for a, h in zip(lo, hi)))
    return None if best is None else best[1]


def stable_region(records: Sequence[dict], keys: Sequence[str], *, without_recovery: bool = False) -> dict:
    """The largest region, a product of per-key intervals over the swept values (numeric keys: an
    interval of their sorted distinct values; categorical keys: one value or all), in which no
    trial diverged (``without_recovery``: no trial diverged or needed a recovery). Largest: most
    settings; ties: more trials, then higher mean val accuracy (non-diverged trials), then the
    widest box (an interval stops at a value whose trials inside the other intervals went bad).

    Returns {"bounds": {key: (lo, hi) for a numeric key, [values] for a categorical one} or None,
    "where": {key: the bound in words, "any" when it covers every value}, "n": trials inside,
    "settings", "diverged": 0, "troubled", "val_acc_mean", "outside": {"n", "diverged", "troubled"},
    "without_recovery", "binned": keys searched over bins, "text": one sentence}. When the number of
    candidate regions passes MAX_REGIONS, keys with many values are searched over the heat maps'
    bins (their bounds: the extreme swept values inside the chosen bins)."""
    keys = _check(records, keys)
    bad_of = _troubled if without_recovery else _diverged
    what = "would have diverged without recovery" if without_recovery else "diverged"
    n_all, bad_all = len(records), sum(bad_of(r) for r in records)
    out: dict[str, Any] = {
        "without_recovery": without_recovery,
        "bounds": None,
        "where": None,
        "n": 0,
        "settings": 0,
        "diverged": 0,
        "troubled": 0,
        "val_acc_mean": None,
        "outside": {"n": n_all, "diverged": sum(map(_diverged, records)), "troubled": sum(map(_troubled, records))},
        "binned": [],
    }
    if not records:
        return {**out, "text": "no trials"}
    axes = [_Axis(k, [r["params"][k] for r in records], bin_many=False) for k in keys]
    if math.prod(len(ax.options()) for ax in axes) > MAX_REGIONS:
        axes = [_Axis(k, [r["params"][k] for r in records], bin_many=True) for k in keys]
    region = _search(records, keys, axes, bad_of) if bad_all else tuple((0, ax.size - 1) for ax in axes)
    if region is None:
        every = "needed a recovery or diverged" if without_recovery else "diverged"
        text = f"every setting {every} (at least one seed each): {bad_all}/{n_all} trials {what}"
        return {**out, "binned": [ax.key for ax in axes if ax.binned], "text": text}

    def inside(r: dict) -> bool:
        return all(lo <= ax.position[v] <= hi for ax, v, (lo, hi) in zip(axes, _setting(r, keys), region))

    ins = [r for r in records if inside(r)]
    outs = [r for r in records if not inside(r)]
    bounds: dict[str, Any] = {}
    where: dict[str, str] = {}
    conds, anys = [], []
    for ax, (lo, hi) in zip(axes, region):
        vals = [v for v in ax.values if lo <= ax.position[v] <= hi]
        full = lo == 0 and hi == ax.size - 1
        if ax.numeric:
            bounds[ax.key] = (vals[0], vals[-1])
            vlo, vhi = _num(vals[0]), _num(vals[-1])
            if full:
                words = "any"
            elif lo == 0:
                words = f"<= {vhi}"
            elif hi == ax.size - 1:
                words = f">= {vlo}"
            elif vlo == vhi:
                words = f"= {vlo}"
            else:
                words = f"in {vlo}..{vhi}"
        else:
            bounds[ax.key] = vals
            words = "any" if full else f"= {_num(ax.values[lo])}"
        where[ax.key] = words
        (anys if full else conds).append(f"any {ax.key}" if full else f"{ax.key} {words}")
    out.update(
        bounds=bounds,
        where=where,
        n=len(ins),
        settings=len({_setting(r, keys) for r in ins}),
        troubled=sum(map(_troubled, ins)),
        val_acc_mean=_mean(r.get("val_acc") for r in ins if not _diverged(r)),
        outside={"n": len(outs), "diverged": sum(map(_diverged, outs)), "troubled": sum(map(_troubled, outs))},
        binned=[ax.key for ax in axes if ax.binned],
    )
    if not bad_all:
        none = "needed a recovery" if without_recovery else "diverged"
        out["text"] = f"no trial {none}: 0/{n_all}" + (f" {what}" if without_recovery else "")
    else:
        bad_out = sum(map(bad_of, outs))
        where_ = " with ".join(conds + ([" and ".join(anys)] if anys else []))
        out["text"] = f"{where_}: 0/{len(ins)} {what} (outside it: {bad_out}/{len(outs)})"
    return out


# -- heat maps --------------------------------------------------------------------------------
def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_") or "key"


def _heat_panel(fig: Figure, ax, data: np.ndarray, texts: list[list[str]], cmap: str, vmin: float, vmax: float):
    cm = matplotlib.colormaps[cmap].with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(data), origin="lower", cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ny, nx = data.shape
    size = max(5, 9 - max(nx, ny) // 3)
    for y in range(ny):
        for x in range(nx):
            if texts[y][x]:
                v = data[y, x]
                level = 0.5 if not math.isfinite(v) else (v - vmin) / (vmax - vmin)
                dark = level > 0.6 if cmap == "Reds" else level < 0.45
                color = "white" if dark else "black"
                ax.text(x, y, texts[y][x], ha="center", va="center", fontsize=size, color=color)
    fig.colorbar(im, ax=ax, shrink=0.85)
    return im


def _plot_pair(records: Sequence[dict], keys: list[str], axes: list[_Axis], pair: tuple[int, ...], path: Path) -> Path:
    xa = axes[pair[-1]]
    ya = axes[pair[0]] if len(pair) == 2 else None
    ny, nx = (ya.size if ya else 1), xa.size
    n, d, a_sum, a_n = (np.zeros((ny, nx)) for _ in range(4))
    for r in records:
        x = xa.position[r["params"][xa.key]]
        y = ya.position[r["params"][ya.key]] if ya else 0
        n[y, x] += 1
        if _diverged(r):
            d[y, x] += 1
        elif r.get("val_acc") is not None and math.isfinite(r["val_acc"]):
            a_sum[y, x] += r["val_acc"]
            a_n[y, x] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, d / n, np.nan)
        acc = np.where(a_n > 0, a_sum / a_n, np.nan)
    rate_txt = [[f"{int(d[y, x])}/{int(n[y, x])}" if n[y, x] else "" for x in range(nx)] for y in range(ny)]
    acc_txt = [[(f"{acc[y, x]:.3f}" if a_n[y, x] else "—") if n[y, x] else "" for x in range(nx)] for y in range(ny)]
    finite = acc[np.isfinite(acc)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    width = min(7.5, max(4.2, 1.6 + 0.75 * nx))
    height = min(6.5, 1.9 + 0.5 * ny) if ya else 2.3
    fig = Figure(figsize=(2 * width, height), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 2)
    _heat_panel(fig, panels[0], rate, rate_txt, "Reds", 0.0, 1.0)
    _heat_panel(fig, panels[1], acc, acc_txt, "viridis", lo, hi)
    panels[0].set_title("divergence rate (gave up or collapsed / trials)", fontsize=10)
    panels[1].set_title("mean val accuracy (not diverged)", fontsize=10)
    slanted = xa.binned or max(len(s) for s in xa.labels) > 6
    for ax in panels:
        ax.set_xticks(range(nx), xa.labels, rotation=30 if slanted else 0, ha="right" if slanted else "center")
        ax.set_xlabel(xa.key + (" (binned)" if xa.binned else ""))
        if ya:
            ax.set_yticks(range(ny), ya.labels)
            ax.set_ylabel(ya.key + (" (binned)" if ya.binned else ""))
        else:
            ax.set_yticks([])
    others = [k for k in keys if k not in (xa.key, ya.key if ya else None)]
    if others:
        fig.suptitle(f"averaged over {', '.join(others)} and seeds", fontsize=9)
    return save_png(fig, path)


def plot_heatmaps(records: Sequence[dict], keys: Sequence[str], out_dir: str | Path) -> list[Path]:
    """For every pair of swept keys (one key: a strip), a PNG with two heat maps side by side:
    divergence rate and mean val accuracy over the trials in each cell (seeds and the other keys
    averaged), annotated "diverged/trials" and "0.951" ("—": no non-diverged trial). Keys with more
    than MAX_EXACT_VALUES numeric values are binned (see ``_Axis``). Returns the PNG paths
    (``heatmap_<key>.png`` or ``heatmap_<key1>__<key2>.png``)."""
    keys = _check(records, keys)
    if not records:
        return []
    out = Path(out_dir)
    axes = [_Axis(k, [r["params"][k] for r in records], bin_many=True) for k in keys]
    pairs = [(0,)] if len(keys) == 1 else list(itertools.combinations(range(len(keys)), 2))
    paths, names = [], set()
    for pair in pairs:
        name = "heatmap_" + "__".join(_slug(keys[i]) for i in pair)
        while name in names:
            name += "_"
        names.add(name)
        paths.append(_plot_pair(records, keys, axes, pair, out / f"{name}.png"))
    return paths


# -- the report -------------------------------------------------------------------------------
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
        p.append(f"<tr{cls}>" + "".join(f"<td>{e(_num(r['params'][k]))}</td>" for k in keys))
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
    trials = sorted(doc["records"], key=lambda r: (r.get("number") is None, r.get("number") or 0, str(r.get("run"))))
    for r in trials:
        cls = " class=bad" if _diverged(r) else (" class=warn" if _troubled(r) else "")
        p.append(f"<tr{cls}><td class=l>{e(str(r.get('run', '')))}</td>{_cell(r.get('number'))}")
        p.append("".join(f"<td>{e(_num(r['params'][k]))}</td>" for k in keys))
        p.append(_cell(r.get("seed")) + f"<td class=l>{e(str(r.get('status', '')))}</td>")
        p.append(_cell(r.get("recoveries")) + _cell(r.get("first_trouble_step")) + _cell(r.get("steps")))
        p.append("".join(_cell(r.get(m)) for m in ("val_acc", "test_acc", "ece", "nll")))
        p.append(_cell(r.get("energy_gap"), ".3g") + _cell(r.get("seconds"), ".1f"))
        p.append(f"<td class=l>{e(str(r.get('cause') or ''))}</td></tr>")
    p.append("</table></body></html>")
    return "\n".join(p)


def write_sweep_report(
    records: Sequence[dict],
    keys: Sequence[str],
    out_dir: str | Path,
    *,
    title: str = "torchjem sweep",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the heat-map PNGs, sweep.json (title, notes, keys, the axes of the heat maps, the
    records, the per-setting summary, the stable regions with and without recovery, the best
    setting) and sweep.html (self-contained) into ``out_dir``, each atomically.
    Returns {"html", "json", "png_<keys>": path}."""
    keys = _check(records, keys)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    pngs = plot_heatmaps(records, keys, out)
    doc = {
        "title": title,
        "notes": [str(n) for n in notes],
        "keys": keys,
        "n_trials": len(records),
        "axes": {k: _Axis(k, [r["params"][k] for r in records], bin_many=True).describe() for k in keys},
        "stable_region": {
            "with_recovery": stable_region(records, keys),
            "without_recovery": stable_region(records, keys, without_recovery=True),
        },
        "best": best_setting(records, keys),
        "summary": summarize(records, keys),
        "heatmaps": [p.name for p in pngs],
        "records": records,
    }
    doc = _plain(doc)
    atomic_write_text(out / "sweep.json", json.dumps(doc, indent=2, allow_nan=False))
    atomic_write_text(out / "sweep.html", render_html(doc, out))
    paths = {"html": out / "sweep.html", "json": out / "sweep.json"}
    paths.update({"png_" + p.stem.removeprefix("heatmap_"): p for p in pngs})
    return paths
