"""Every PNG of the evaluation report, through the one PNG writer (``torchjem.figures``):
reliability diagrams, OOD score histograms, sample grids, robust-accuracy curves (PGD against the
attack suite's worst case) and training dynamics; ``model_plots`` writes those of one model's results.

Plots use matplotlib's object-oriented API (``Figure``; no pyplot), so importing this module leaves
the user's matplotlib backend as it is.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..evaluate.results import CalibrationResult, OODResult
from ..figures import DPI, save_png
from ..grids import grid_image, save_samples
from ..rundir.history import History, is_window, number, record_step
from .schema import ModelReport


def plot_reliability(cal: CalibrationResult, path: str | Path, label: str = "") -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, the gap shaded; below,
    the examples per bin."""
    bins = cal.bins
    edges = np.asarray(bins["edges"])
    lo, width = edges[:-1], np.diff(edges)
    acc, conf, count = (np.asarray(bins[k], dtype=float) for k in ("accuracy", "confidence", "count"))
    filled = count > 0
    fig = Figure(figsize=(4.2, 4.8), layout="constrained")
    ax, axc = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(
        lo[filled], acc[filled], width[filled], align="edge", color="#4c72b0", edgecolor="k", lw=0.5, label="accuracy"
    )
    gap_lo, gap_hi = np.minimum(acc, conf), np.maximum(acc, conf)
    ax.bar(
        lo[filled],
        (gap_hi - gap_lo)[filled],
        width[filled],
        bottom=gap_lo[filled],
        align="edge",
        color="#dd8452",
        alpha=0.45,
        hatch="//",
        edgecolor="#c44e52",
        lw=0.5,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(f"{label}  ECE {cal.ece:.2%}  MCE {cal.mce:.2%}".strip(), fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    axc.bar(lo, count, width, align="edge", color="grey", edgecolor="k", lw=0.3)
    axc.set(xlabel="confidence (max softmax)", ylabel="count")
    return save_png(fig, path)


def plot_ood_histograms(ood: OODResult, path: str | Path, label: str = "") -> Path:
    """One panel per (OOD set, score): the in-distribution scores against the set's, with AUROC."""
    arrays, scores, sets = ood.arrays, ood.scores, list(ood.sets)
    fig = Figure(figsize=(3.2 * len(scores), 2.4 * len(sets)), dpi=110, layout="constrained")
    axes = fig.subplots(len(sets), len(scores), squeeze=False)
    for r, name in enumerate(sets):
        for c, score in enumerate(scores):
            ax = axes[r, c]
            s_in, s_out = np.asarray(arrays["in"][score]), np.asarray(arrays[name][score])
            both = np.concatenate([s_in, s_out])
            lo, hi = np.percentile(both, 0.5), np.percentile(both, 99.5)
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40)
            kw = {"density": True, "alpha": 0.55, "histtype": "stepfilled"}  # one polygon each: fast to draw
            ax.hist(np.clip(s_in, lo, hi), bins, color="#4c72b0", label="in-dist", **kw)
            ax.hist(np.clip(s_out, lo, hi), bins, color="#dd8452", label=name, **kw)
            ax.set_title(f"{name} · {score}  AUROC {ood.sets[name][score]['auroc']:.3f}", fontsize=10)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_yticks([])
            if c == 0:
                ax.legend(fontsize=8)
    if label:
        fig.suptitle(f"{label}: OOD scores (higher = more in-distribution)", fontsize=12)
    return save_png(fig, path)


def plot_class_grid(x: Any, per_class: int, path: str | Path, width: int = 480) -> Path:
    """Class-conditional samples (N, C, H, W), ``per_class`` consecutive ones per class, as a grid
    with one row per class, labelled with the class on the left; 1-D signals as ``save_samples``."""
    if x.ndim != 4:
        return save_samples(x, path, nrow=per_class)
    pad = 1
    img = grid_image(x, per_class, pad)
    h, rows = x.shape[2], math.ceil(len(x) / per_class)
    inches = max(1, width // img.shape[1]) * img.shape[1] / DPI  # the pixels upscaled by an integer factor
    fig = Figure(figsize=(inches, inches * img.shape[0] / img.shape[1]), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([pad + r * (h + pad) + (h - 1) / 2 for r in range(rows)], [f"class {r}" for r in range(rows)],
                  fontsize=10)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return save_png(fig, path, tight=True)  # cropped to the grid and its labels


def plot_curves(curves: dict[str, list[float]], eps: list[float], norm: str, path: str | Path) -> Path:
    """A PNG of robust accuracy against eps, one line per setting."""
    fig = Figure(figsize=(5, 3.6), dpi=110)
    ax = fig.subplots()
    for name, acc in curves.items():
        ax.plot(list(eps), acc, marker="o", label=name)
    ax.set_xlabel(f"epsilon ({'L-inf' if norm == 'linf' else 'L2'}, data in [-1, 1])")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"PGD {norm}")
    fig.tight_layout()
    return save_png(fig, path)


def plot_audit(audit: dict[str, dict[str, Any]], path: str | Path, label: str = "") -> Path:
    """Robust accuracy against eps per audited setting: PGD's figure (dashed) and the attack suite's
    worst case (solid), from attack.json's "audit"."""
    fig = Figure(figsize=(5, 3.6), dpi=110)
    ax = fig.subplots()
    for i, (name, a) in enumerate(audit.items()):
        color = f"C{i}"
        if a.get("pgd") is not None:
            ax.plot(a["eps"], a["pgd"], ls="--", marker=".", color=color, label=f"{name}: PGD")
        ax.plot(a["eps"], a["worst"], marker="o", color=color, label=f"{name}: suite worst case")
    norm = next(iter(audit.values())).get("norm", "linf") if audit else "linf"
    ax.set_xlabel(f"epsilon ({'L-inf' if norm == 'linf' else 'L2'}, data in [-1, 1])")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{label}: PGD and the attack suite".strip(": "), fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


# -- training dynamics ------------------------------------------------------------------------
TROUBLE = "#c44e52"  # recoveries: line at the divergence, span back to the state rewound to


def _draw(ax: Any, series: tuple[np.ndarray, np.ndarray, np.ndarray], color: str, label: str, **kw: Any) -> None:
    """The records in file order, readably: the kept ones (their steps increase) as one solid
    line; each run of superseded records as a faint dashed branch that forks off the kept record
    before it, so a rewound stretch shows as a detour under the line training went on with."""
    s, v, gone = series
    if len(s) <= 40:
        kw.setdefault("marker", ".")
    ax.plot(s[~gone], v[~gone], color=color, label=label, lw=1.2, **kw)
    i = 0
    while i < len(s):
        if not gone[i]:
            i += 1
            continue
        j = i
        while j < len(s) and gone[j]:
            j += 1
        lo = i - 1 if i > 0 else i
        ax.plot(s[lo:j], v[lo:j], color=color, alpha=0.4, ls="--", lw=1, **kw)
        i = j


def _retry_labels(recoveries: list[dict], xlim: tuple[float, float], gap: float = 0.05) -> list[tuple[float, str]]:
    """The retry numbers over the top panel, one label per cluster of recoveries closer than
    ``gap`` of the axis' width ("#2-4" at the cluster's first step), so that they never overprint."""
    marks = sorted((at, e.get("retry", "?")) for e in recoveries if (at := number(e.get("at_step"))) is not None)
    width = max(xlim[1] - xlim[0], 1e-9)
    groups: list[list[tuple[float, Any]]] = []
    for at, retry in marks:
        if groups and (at - groups[-1][0][0]) / width < gap:
            groups[-1].append((at, retry))
        else:
            groups.append([(at, retry)])
    out = []
    for g in groups:
        first, last = g[0][1], g[-1][1]
        out.append((g[0][0], f"#{first}" if len(g) == 1 else f"#{first}-{last}"))
    return out


def plot_dynamics(records: list[dict], path: str | Path, label: str = "") -> Path:
    """Training dynamics from a run's metrics.jsonl records (file order): loss; training and
    validation accuracy; energy of data and of samples; their gap (sample - data); the chains'
    health (sample norm / data norm, fraction of sample values out of range); learning rate,
    over training steps. Every panel marks the divergence events: a recovery as a red dashed line
    at the step that diverged with the span back to the step it rewound to shaded (and an arrow on
    the top panel, with the retry number), a give-up as a black dotted line with an X. Records that
    a rewind superseded are drawn faint and dashed (see ``_draw``). A run without a p(x) term
    (--clf-only) logs no energies: its energy panel says so and the gap panel is left out."""
    windows = [r for r in records if is_window(r)]
    # validation: the epoch records, and the final validation a max_steps run logs with "done"
    # (unless an epoch record already has that step)
    val = [r for r in records if "event" not in r and "loss" not in r and "val_acc" in r]
    val_steps = {record_step(r) for r in val}
    val += [r for r in records if r.get("event") == "done" and "val_acc" in r and record_step(r) not in val_steps]
    recoveries = [r for r in records if r.get("event") == "recovery"]
    gave_up = [r for r in records if r.get("event") == "gave_up" and record_step(r) is not None]
    has_energy = any(number(r.get("energy_data")) is not None for r in windows)

    has_health = any(number(r.get("norm_ratio")) is not None for r in windows)
    panels = ["loss", "accuracy", "energy"] + (["gap"] if has_energy else []) + (["chains"] if has_health else [])
    panels += ["lr"]
    fig = Figure(figsize=(6.4, 1.65 * len(panels) + 1.1), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    ax = dict(zip(panels, axes))

    _draw(ax["loss"], History(windows).series("loss"), "#4c72b0", "loss")
    ax["loss"].set_ylabel("loss")
    _draw(ax["accuracy"], History(windows).series("acc"), "#4c72b0", "training (window mean)")
    if val:
        _draw(ax["accuracy"], History(val).series("val_acc"), "#55a868", "validation", marker="o", ms=3)
    ax["accuracy"].set_ylabel("accuracy")
    ax["accuracy"].legend(fontsize=6, loc="lower right")
    if has_energy:
        _draw(ax["energy"], History(windows).series("energy_data"), "#4c72b0", "data")
        _draw(ax["energy"], History(windows).series("energy_sample"), "#dd8452", "samples")
        ax["energy"].legend(fontsize=6, loc="best")
        gap = [
            {"step": r["step"], "gap": r["energy_sample"] - r["energy_data"]}
            for r in windows
            if number(r.get("energy_data")) is not None and number(r.get("energy_sample")) is not None
        ]
        _draw(ax["gap"], History(gap).series("gap"), "#8172b2", "gap")
        ax["gap"].axhline(0, color="grey", lw=0.6)
        ax["gap"].set_ylabel("E(samples) -\nE(data)")
    else:
        ax["energy"].text(0.5, 0.5, "no p(x) term (classifier-only run): no energies", transform=ax["energy"].transAxes,
                          ha="center", va="center", fontsize=8, color="#555")
        ax["energy"].set_yticks([])
    ax["energy"].set_ylabel("energy\n-log p(x)")
    if has_health:  # chain health: norm ratio (log scale) and the fraction out of range (right axis)
        _draw(ax["chains"], History(windows).series("norm_ratio"), "#c44e52", "sample / data norm")
        ax["chains"].set_yscale("log")
        ax["chains"].set_ylabel("sample norm /\ndata norm")
        right = ax["chains"].twinx()
        _draw(right, History(windows).series("out_of_range"), "#64b5cd", "out of range")
        right.set_ylim(-0.02, 1.02)
        right.set_ylabel("fraction out\nof range", fontsize=7)
        right.tick_params(labelsize=7)
        lines = ax["chains"].get_lines()[:1] + right.get_lines()[:1]
        ax["chains"].legend(lines, [ln.get_label() for ln in lines], fontsize=6, loc="upper left")
    s_lr, v_lr, gone_lr = History(windows).series("lr")
    _draw(ax["lr"], (s_lr, v_lr, gone_lr), "#937860", "lr")
    if len(v_lr) and v_lr.min() > 0 and v_lr.max() >= 10 * v_lr.min():
        ax["lr"].set_yscale("log")
    ax["lr"].set_ylabel("learning rate")
    axes[-1].set_xlabel("training step")
    if not windows:
        ax["loss"].text(0.5, 0.5, "no training records", transform=ax["loss"].transAxes, ha="center", va="center")

    for a in axes:
        a.tick_params(labelsize=7)
        a.grid(alpha=0.25)
        for e in recoveries:
            at, back = number(e.get("at_step")), number(e.get("rewound_to"))
            if at is None:
                continue
            if back is not None:
                a.axvspan(back, at, color=TROUBLE, alpha=0.12, lw=0)
            a.axvline(at, color=TROUBLE, ls="--", lw=1)
        for e in gave_up:
            a.axvline(e["step"], color="k", ls=":", lw=1.5)
            a.plot([e["step"]], [1.0], marker="X", color="k", ms=7, transform=a.get_xaxis_transform(), clip_on=False)
    top = axes[0]
    for e in recoveries:
        at, back = number(e.get("at_step")), number(e.get("rewound_to"))
        if at is None or back is None:
            continue
        top.annotate("", xy=(back, 0.88), xytext=(at, 0.88), xycoords=top.get_xaxis_transform(),
                     arrowprops={"arrowstyle": "->", "color": TROUBLE, "lw": 1})
    for at, text in _retry_labels(recoveries, top.get_xlim()):
        top.text(at, 1.01, text, transform=top.get_xaxis_transform(), color=TROUBLE, fontsize=6, ha="center",
                 va="bottom")

    handles: list[Any] = []
    if any(History(windows).series("loss")[2]):
        rewound = "faint, dashed: steps rewound and done again"
        handles.append(Line2D([], [], color="grey", ls="--", alpha=0.5, label=rewound))
    if recoveries:
        n = len(recoveries)
        handles.append(Line2D([], [], color=TROUBLE, ls="--", label=f"recovery ({n}): diverged at the line (#retry)"))
        handles.append(Patch(color=TROUBLE, alpha=0.12, label="... rewound to the shaded span's start"))
    for e in gave_up:
        cause = str(e.get("cause", "?"))
        cause = cause if len(cause) <= 150 else cause[:147] + "..."
        text = textwrap.fill(f"gave up at step {e['step']}: {cause}", 80, subsequent_indent="  ")
        handles.append(Line2D([], [], color="k", ls=":", marker="X", label=text))
    if not recoveries and not gave_up:
        handles.append(Line2D([], [], color="none", label="no divergence events"))
    # two columns only while they fit the figure's width (6.4 in at 6.5 pt: about 60 characters each)
    wide = max(len(line) for h in handles for line in h.get_label().splitlines()) > 55
    fig.legend(handles=handles, loc="outside lower center", ncols=1 if wide or len(handles) == 1 else 2,
               fontsize=6.5)
    fig.suptitle(f"{label}: training dynamics".strip(": "), fontsize=10)
    return save_png(fig, path)


def model_plots(m: ModelReport, role: str, out: Path) -> dict[str, str]:
    """Write the PNGs of one model's results into ``out`` as ``<role>_<figure>.png``; returns
    {figure: file name}. The robustness plot is copied from where its attack.json names it."""
    label, png = m.label or role, {}

    def path(figure: str) -> Path:
        return out / f"{role}_{figure}.png"

    ev = m.evaluation
    if ev is not None and ev.calibration is not None:
        png["reliability"] = plot_reliability(ev.calibration, path("reliability"), label).name
    if ev is not None and ev.ood is not None and ev.ood.arrays:
        png["ood_histograms"] = plot_ood_histograms(ev.ood, path("ood_histograms"), label).name
    if ev is not None and ev.generation is not None and ev.generation.arrays:
        arrays = ev.generation.arrays
        uncond = save_samples(arrays["unconditional"][:100], path("samples_unconditional"))
        cond = plot_class_grid(arrays["conditional"], ev.generation.per_class, path("samples_conditional"))
        png["samples_unconditional"], png["samples_conditional"] = uncond.name, cond.name
    rob = m.robustness
    if rob is not None and rob.png_path and Path(rob.png_path).is_file():
        dst = path("robust_accuracy")
        if Path(rob.png_path).resolve() != dst.resolve():
            shutil.copyfile(rob.png_path, dst)
        png["robust_accuracy"] = dst.name
    if rob is not None and rob.audit:
        png["robust_audit"] = plot_audit(rob.audit, path("robust_audit"), label).name
    if m.history is not None and m.history.records:
        png["dynamics"] = plot_dynamics(m.history.records, path("dynamics"), label).name
    return png


__all__ = [
    "model_plots", "plot_audit", "plot_class_grid", "plot_curves", "plot_dynamics", "plot_ood_histograms",
    "plot_reliability", "save_samples",
]
