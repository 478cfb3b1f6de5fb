"""Heat maps of a sweep: for every pair of swept keys, the divergence rate and the mean validation
accuracy over the trials of each cell. Plots use matplotlib's object API (``Figure`` + its Agg
canvas; no pyplot), so importing this module leaves the user's matplotlib backend as it is."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..figures import save_png
from .axes import Axis, check
from .record import TrialRecord


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


def _plot_pair(
    records: Sequence[TrialRecord], keys: list[str], axes: list[Axis], pair: tuple[int, ...], path: Path
) -> Path:
    xa = axes[pair[-1]]
    ya = axes[pair[0]] if len(pair) == 2 else None
    ny, nx = (ya.size if ya else 1), xa.size
    n, d, a_sum, a_n = (np.zeros((ny, nx)) for _ in range(4))
    for r in records:
        x = xa.position[r.params[xa.key]]
        y = ya.position[r.params[ya.key]] if ya else 0
        n[y, x] += 1
        if r.diverged:
            d[y, x] += 1
        elif r.val_acc is not None and math.isfinite(r.val_acc):
            a_sum[y, x] += r.val_acc
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


def plot_heatmaps(records: Sequence[TrialRecord], keys: Sequence[str], out_dir: str | Path) -> list[Path]:
    """For every pair of swept keys (one key: a strip), a PNG with two heat maps side by side:
    divergence rate and mean val accuracy over the trials in each cell (seeds and the other keys
    averaged), annotated "diverged/trials" and "0.951" ("—": no non-diverged trial). Keys with more
    than MAX_EXACT_VALUES numeric values are binned (see ``Axis``). Returns the PNG paths
    (``heatmap_<key>.png`` or ``heatmap_<key1>__<key2>.png``)."""
    keys = check(records, keys)
    if not records:
        return []
    out = Path(out_dir)
    axes = [Axis(k, [r.params[k] for r in records], bin_many=True) for k in keys]
    pairs = [(0,)] if len(keys) == 1 else list(itertools.combinations(range(len(keys)), 2))
    paths, names = [], set()
    for pair in pairs:
        name = "heatmap_" + "__".join(_slug(keys[i]) for i in pair)
        while name in names:
            name += "_"
        names.add(name)
        paths.append(_plot_pair(records, keys, axes, pair, out / f"{name}.png"))
    return paths
