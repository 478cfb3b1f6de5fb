"""The evaluation report: report.json (every figure), report.html (self-contained: the PNGs are
embedded) and the PNGs themselves, with one column per model (the run and its baseline).

``write_report(report, out_dir)`` takes the dict that ``torchjem.workflows.evaluate.evaluate_run``
builds: {"title", "created", "settings", "data", "models": {role: model_result}}, where each
model_result holds "classification", "calibration", "ood", "generation", "robustness" and
"dynamics" (the training curves of a run with a metrics.jsonl) sections (any may be missing).
Arrays for plots live under "arrays" keys; they go into the PNGs, not into report.json. Every
number the HTML shows is rendered from report.json's content, and its table cell names its JSON
path (``data-key``), so the two cannot disagree.

Plots use matplotlib's object-oriented API (``Figure``, ``matplotlib.image.imsave``; no pyplot),
so importing this module leaves the user's matplotlib backend as it is.
"""

from __future__ import annotations

import html
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .checkpoint import atomic_write_bytes, atomic_write_text
from .errors import InputError
from .figures import png_img, save_png

ROBUSTNESS_FILE = Path("attack") / "attack.json"
OOD_METRICS = {"auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out", "fpr95": "FPR95"}


# -- JSON -------------------------------------------------------------------------------------
def strip_arrays(obj: Any) -> Any:
    """``obj`` without its "arrays" entries, tensors as lists, NaN/inf as None (valid JSON)."""
    if isinstance(obj, dict):
        return {k: strip_arrays(v) for k, v in obj.items() if k != "arrays"}
    if isinstance(obj, (list, tuple)):
        return [strip_arrays(v) for v in obj]
    if hasattr(obj, "tolist"):
        return strip_arrays(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_robustness(run_dir: str | Path) -> dict | None:
    """RUN_DIR/attack/attack.json (written by `jem attack`) with its PNG resolved, or None."""
    path = Path(run_dir) / ROBUSTNESS_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None
    return check_robustness(result, Path(run_dir), str(path))


def check_robustness(result: dict, run_dir: Path | None = None, what: str = "robustness result") -> dict:
    """Validate an attack.json dict ({"norm", "eps", "n", "curves", "png", "distal"?}); resolves
    its "png" against ``run_dir`` into "png_path" (None when the file is missing)."""
    if not isinstance(result, dict) or not isinstance(result.get("curves"), dict) or "eps" not in result:
        raise InputError(f"{what}: expected a dict with 'eps' and 'curves' (the schema of attack.json)")
    eps = list(result["eps"])
    for name, curve in result["curves"].items():
        if len(curve) != len(eps):
            raise InputError(f"{what}: curve {name!r} has {len(curve)} values for {len(eps)} eps")
    out = dict(result)
    png = result.get("png")
    path = None
    if png:
        path = Path(png)
        if not path.is_absolute() and run_dir is not None:
            path = run_dir / path
    out["png_path"] = str(path) if path is not None and path.is_file() else None
    return out


# -- plots ------------------------------------------------------------------------------------


def plot_reliability(cal: dict, path: str | Path, label: str = "") -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, the gap shaded."""
    bins = cal["bins"]
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
    ax.set_title(f"{label}  ECE {cal['ece']:.2%}  MCE {cal['mce']:.2%}".strip(), fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    axc.bar(lo, count, width, align="edge", color="grey", edgecolor="k", lw=0.3)
    axc.set(xlabel="confidence (max softmax)", ylabel="count")
    return save_png(fig, path)


def plot_ood_histograms(ood: dict, path: str | Path, label: str = "") -> Path:
    """One panel per (OOD set, score): the in-distribution scores against the set's, with AUROC."""
    arrays, scores, sets = ood["arrays"], ood["scores"], list(ood["sets"])
    fig = Figure(figsize=(2.7 * len(scores), 2.0 * len(sets)), layout="constrained")
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
            ax.set_title(f"{name} · {score}  AUROC {ood['sets'][name][score]['auroc']:.3f}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_yticks([])
            if c == 0:
                ax.legend(fontsize=6)
    if label:
        fig.suptitle(f"{label}: OOD scores (higher = more in-distribution)", fontsize=10)
    return save_png(fig, path)


def save_samples(x: Any, path: str | Path, nrow: int | None = None, width: int = 480) -> Path:
    """A sample grid as a crisp PNG about ``width`` pixels wide (nearest-neighbour upscaling);
    1-D signals as line plots (samples.save_grid)."""
    from .samples import grid_image, save_grid

    if x.ndim != 4:
        return save_grid(x, path, nrow)
    img = grid_image(x, nrow)
    scale = max(1, width // img.shape[1])
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    imsave(buf, img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


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


# -- training dynamics ------------------------------------------------------------------------
DYNAMICS_FINAL = ("loss", "acc", "energy_data", "energy_sample", "energy_gap", "lr")
TROUBLE = "#c44e52"  # recoveries: line at the divergence, span back to the state rewound to


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _step(record: dict) -> int | None:
    s = record.get("step")
    return s if isinstance(s, int) and not isinstance(s, bool) else None


def _is_window(record: dict) -> bool:
    """A window record of metrics.jsonl (the means of the per-step diagnostics since the last one)."""
    return "event" not in record and "loss" in record and _step(record) is not None


def _trouble_step(event: dict) -> int | None:
    """Where a recovery or give-up happened: a recovery event's own "step" is the step it rewound
    to (it is written after the rewind), so its "at_step" is the divergence."""
    return event.get("at_step", _step(event)) if event.get("event") == "recovery" else _step(event)


def dynamics_summary(records: list[dict]) -> dict[str, Any]:
    """The figures of a run's metrics.jsonl records (RunDir.read_metrics(), file order):
    {"steps": the last record's step, "recoveries": count, "gave_up": bool, "first_trouble_step":
    the step of the first divergence (recovery or give-up) or None, "final": the last window
    record's means of loss, acc, energy_data, energy_sample, energy_gap (sample - data) and lr
    (None where the run did not log it: no energies without a p(x) term)}."""
    steps = [s for s in map(_step, records) if s is not None]
    events = [r for r in records if r.get("event") in ("recovery", "gave_up")]
    windows = [r for r in records if _is_window(r)]
    last = windows[-1] if windows else {}
    final = {k: _number(last.get(k)) for k in DYNAMICS_FINAL}
    e_data, e_sample = final["energy_data"], final["energy_sample"]
    final["energy_gap"] = e_sample - e_data if e_data is not None and e_sample is not None else None
    return {
        "steps": steps[-1] if steps else None,
        "recoveries": sum(r["event"] == "recovery" for r in events),
        "gave_up": any(r["event"] == "gave_up" for r in events),
        "first_trouble_step": _trouble_step(events[0]) if events else None,
        "final": final,
    }


def _superseded(steps: list[int]) -> np.ndarray:
    """Which records (file order) a later record of their kind has at the same or an earlier step:
    training was rewound (a recovery, or a resume from an older checkpoint) past them and those
    steps were done again, so the record is not part of the run's history as it stands."""
    out, later = np.zeros(len(steps), dtype=bool), math.inf
    for i in range(len(steps) - 1, -1, -1):
        out[i] = later <= steps[i]
        later = min(later, steps[i])
    return out


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, values, superseded) of the records holding a number under ``key``."""
    picked = [(_step(r), _number(r.get(key))) for r in records]
    picked = [(s, v) for s, v in picked if s is not None and v is not None]
    steps = [s for s, _ in picked]
    return np.asarray(steps, dtype=float), np.asarray([v for _, v in picked], dtype=float), _superseded(steps)


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


def plot_dynamics(records: list[dict], path: str | Path, label: str = "") -> Path:
    """Training dynamics from a run's metrics.jsonl records (file order): loss; training and
    validation accuracy; energy of data and of samples; their gap (sample - data); learning rate,
    over training steps. Every panel marks the divergence events: a recovery as a red dashed line
    at the step that diverged with the span back to the step it rewound to shaded (and an arrow on
    the top panel, with the retry number), a give-up as a black dotted line with an X. Records that
    a rewind superseded are drawn faint and dashed (see ``_draw``). A run without a p(x) term
    (--clf-only) logs no energies: its energy panel says so and the gap panel is left out."""
    windows = [r for r in records if _is_window(r)]
    # validation: the epoch records, and the final validation a max_steps run logs with "done"
    # (unless an epoch record already has that step)
    val = [r for r in records if "event" not in r and "loss" not in r and "val_acc" in r]
    val_steps = {_step(r) for r in val}
    val += [r for r in records if r.get("event") == "done" and "val_acc" in r and _step(r) not in val_steps]
    recoveries = [r for r in records if r.get("event") == "recovery"]
    gave_up = [r for r in records if r.get("event") == "gave_up" and _step(r) is not None]
    has_energy = any(_number(r.get("energy_data")) is not None for r in windows)

    panels = ["loss", "accuracy", "energy"] + (["gap"] if has_energy else []) + ["lr"]
    fig = Figure(figsize=(6.4, 1.65 * len(panels) + 1.1), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    ax = dict(zip(panels, axes))

    _draw(ax["loss"], _series(windows, "loss"), "#4c72b0", "loss")
    ax["loss"].set_ylabel("loss")
    _draw(ax["accuracy"], _series(windows, "acc"), "#4c72b0", "training (window mean)")
    if val:
        _draw(ax["accuracy"], _series(val, "val_acc"), "#55a868", "validation", marker="o", ms=3)
    ax["accuracy"].set_ylabel("accuracy")
    ax["accuracy"].legend(fontsize=6, loc="lower right")
    if has_energy:
        _draw(ax["energy"], _series(windows, "energy_data"), "#4c72b0", "data")
        _draw(ax["energy"], _series(windows, "energy_sample"), "#dd8452", "samples")
        ax["energy"].legend(fontsize=6, loc="best")
        gap = [
            {"step": r["step"], "gap": r["energy_sample"] - r["energy_data"]}
            for r in windows
            if _number(r.get("energy_data")) is not None and _number(r.get("energy_sample")) is not None
        ]
        _draw(ax["gap"], _series(gap, "gap"), "#8172b2", "gap")
        ax["gap"].axhline(0, color="grey", lw=0.6)
        ax["gap"].set_ylabel("E(samples) -\nE(data)")
    else:
        ax["energy"].text(0.5, 0.5, "no p(x) term (classifier-only run): no energies", transform=ax["energy"].transAxes,
                          ha="center", va="center", fontsize=8, color="#555")  # fmt: skip
        ax["energy"].set_yticks([])
    ax["energy"].set_ylabel("energy\n-log p(x)")
    s_lr, v_lr, gone_lr = _series(windows, "lr")
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
            at, back = _number(e.get("at_step")), _number(e.get("rewound_to"))
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
        at, back = _number(e.get("at_step")), _number(e.get("rewound_to"))
        if at is None or back is None:
            continue
        top.annotate("", xy=(back, 0.88), xytext=(at, 0.88), xycoords=top.get_xaxis_transform(),
                     arrowprops={"arrowstyle": "->", "color": TROUBLE, "lw": 1})  # fmt: skip
        top.text(at, 1.01, f"#{e.get('retry', '?')}", transform=top.get_xaxis_transform(), color=TROUBLE,
                 fontsize=6, ha="center", va="bottom")  # fmt: skip

    handles: list[Any] = []
    if any(_series(windows, "loss")[2]):
        rewound = "faint, dashed: steps rewound and done again"
        handles.append(Line2D([], [], color="grey", ls="--", alpha=0.5, label=rewound))
    if recoveries:
        n = len(recoveries)
        handles.append(Line2D([], [], color=TROUBLE, ls="--", label=f"recovery ({n}): diverged at the line (#retry)"))
        handles.append(Patch(color=TROUBLE, alpha=0.12, label="... rewound to the shaded span's start"))
    for e in gave_up:
        cause = str(e.get("cause", "?"))
        cause = cause if len(cause) <= 60 else cause[:57] + "..."
        handles.append(Line2D([], [], color="k", ls=":", marker="X", label=f"gave up at step {e['step']}: {cause}"))
    if not recoveries and not gave_up:
        handles.append(Line2D([], [], color="none", label="no divergence events"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2 if len(handles) > 1 else 1, fontsize=6.5)
    fig.suptitle(f"{label}: training dynamics".strip(": "), fontsize=10)
    return save_png(fig, path)


# -- HTML -------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.col{flex:1;min-width:300px}.col img{max-width:100%}.col img.grid{width:100%;max-width:480px;image-rendering:pixelated}
.note{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 .2em}
"""


def fmt(value: Any) -> str:
    """How a figure is printed in the report (the HTML test uses this too)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float) and 0 < abs(value) < 1e-3:  # a learning rate, a KID: "0.0000" would hide it
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return html.escape(str(value))


def _get(obj: Any, path: list) -> Any:
    for p in path:
        if isinstance(obj, dict):
            obj = obj.get(p)
        elif isinstance(obj, list) and isinstance(p, int) and p < len(obj):
            obj = obj[p]
        else:
            return None
    return obj


class _Html:
    def __init__(self, report: dict, out_dir: Path) -> None:
        self.r, self.out, self.parts = report, out_dir, []
        self.roles = list(report["models"])

    def add(self, s: str) -> None:
        self.parts.append(s)

    def cell(self, path: list) -> str:
        """A table cell holding the figure at ``path`` in report.json, tagged with that path."""
        value = _get(self.r, path)
        key = html.escape(json.dumps(path), quote=True)
        return f'<td data-key="{key}">{fmt(value)}</td>'

    def img(self, name: str | None, alt: str, cls: str = "") -> str:
        if not name or not (self.out / name).is_file():
            return f'<p class="note">({html.escape(alt)}: no image)</p>'
        return png_img(self.out / name, alt, cls)

    def label(self, role: str) -> str:
        m = self.r["models"][role]
        return f"{html.escape(m.get('label', role))} <small>({html.escape(m.get('kind', ''))})</small>"

    def figures_table(self, rows: list[tuple[str, list]], roles: list[str] | None = None) -> None:
        """Rows of (name, path inside a model result), one column per model."""
        roles = roles or self.roles
        self.add("<table><tr><th class=l></th>" + "".join(f"<th>{self.label(r)}</th>" for r in roles) + "</tr>")
        for name, sub in rows:
            if all(_get(self.r["models"][r], sub) is None for r in roles):
                continue
            cells = "".join(self.cell(["models", r, *sub]) for r in roles)
            self.add(f"<tr><td class=l>{html.escape(name)}</td>{cells}</tr>")
        self.add("</table>")

    def images(self, key: str, alt: str, cls: str = "", roles: list[str] | None = None) -> None:
        self.add('<div class="row">')
        for r in roles or self.roles:
            name = self.r["models"][r].get("png", {}).get(key)
            self.add(f'<div class="col"><h3>{self.label(r)}</h3>{self.img(name, f"{alt} ({r})", cls)}</div>')
        self.add("</div>")

    def has(self, section: str) -> list[str]:
        return [r for r in self.roles if self.r["models"][r].get(section)]


def render_html(report: dict, out_dir: str | Path) -> str:
    """The report as one self-contained HTML page (PNGs in ``out_dir`` embedded as base64)."""
    h = _Html(report, Path(out_dir))
    title = html.escape(report.get("title", "torchjem evaluation"))
    h.add(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head><body>")
    h.add(f"<h1>{title}</h1>")
    data, settings = report.get("data", {}), report.get("settings", {})
    h.add(
        f"<p class=note>Created {html.escape(str(report.get('created', '')))} · data "
        f"<code>{html.escape(str(data.get('name', '')))}</code> (inputs {html.escape(str(data.get('shape', '')))}, "
        f"{html.escape(str(data.get('n_classes', '')))} classes) · "
        + " · ".join(
            f"{html.escape(str(k))}: <code>{html.escape(str(v))}</code>"
            for k, v in settings.items()
            if k != "ood_descriptions"
        )
        + "</p>"
    )
    h.add("<table><tr><th class=l>model</th><th class=l>run directory</th><th class=l>checkpoint</th></tr>")
    for r in h.roles:
        m = report["models"][r]
        h.add(
            f"<tr><td class=l>{h.label(r)}</td><td class=l><code>{html.escape(str(m.get('run_dir', '')))}</code></td>"
            f"<td class=l>{html.escape(str(m.get('checkpoint', '')))}</td></tr>"
        )
    h.add("</table>")

    # Summary
    h.add("<h2>Summary</h2>")
    rows = [
        ("test accuracy", ["classification", "accuracy"]),
        ("test NLL", ["classification", "nll"]),
        ("accuracy after SGLD refinement", ["classification_refined", "accuracy"]),
        ("ECE (max softmax)", ["calibration", "ece"]),
    ]
    sets = _union(report, lambda m: list(m.get("ood", {}).get("sets", {})))
    rows += [(f"OOD AUROC, {s}, px", ["ood", "sets", s, "px", "auroc"]) for s in sets]
    rows += [
        ("FID", ["generation", "fid"]),
        ("conditional accuracy", ["generation", "conditional_accuracy"]),
    ]
    h.figures_table(rows)
    labels = {report["models"][r].get("generation", {}).get("feature_label") for r in h.has("generation")}
    if labels:
        h.add(f"<p class=note>FID with features of {html.escape('; '.join(sorted(labels)))}.</p>")

    # Classification
    if h.has("classification"):
        h.add("<h2>Classification</h2>")
        h.figures_table(
            [
                ("accuracy", ["classification", "accuracy"]),
                ("NLL", ["classification", "nll"]),
                ("examples", ["classification", "n"]),
                ("refinement steps", ["classification_refined", "refine_steps"]),
                ("accuracy after refinement", ["classification_refined", "accuracy"]),
                ("NLL after refinement", ["classification_refined", "nll"]),
            ]
        )
        h.add(
            "<p class=note>Refinement: the test inputs first take n SGLD steps up log p(x) under the model "
            "(the paper's test-time refinement), then are classified.</p>"
        )

    # Calibration
    if h.has("calibration"):
        n_bins = _get(report["models"][h.has("calibration")[0]], ["calibration", "n_bins"])
        h.add("<h2>Calibration</h2>")
        h.figures_table(
            [
                ("ECE", ["calibration", "ece"]),
                ("MCE", ["calibration", "mce"]),
                ("accuracy", ["calibration", "accuracy"]),
                ("mean confidence", ["calibration", "confidence"]),
                ("bins", ["calibration", "n_bins"]),
                ("examples", ["calibration", "n"]),
            ]
        )
        h.add(
            f"<p class=note>Max-softmax confidence in {n_bins} equal-width bins. ECE: the count-weighted mean gap "
            "between accuracy and confidence per bin; MCE: the largest gap. Blue bars: accuracy per bin; "
            "shaded: the gap to the bin's mean confidence; dashed: perfect calibration; below: examples per bin.</p>"
        )
        h.images("reliability", "reliability diagram")

    # OOD
    if h.has("ood"):
        h.add("<h2>Out-of-distribution detection</h2>")
        h.add(
            "<p class=note>In-distribution test set = positive class. Scores (higher = more in-distribution): "
            "<b>px</b> log p(x) = logsumexp of the logits; <b>py</b> max softmax; <b>pxgrad</b> "
            "-||d log p(x)/dx||<sub>2</sub>; <b>maxlogit</b> the largest logit. AUROC 0.5 = chance, 1 = perfect; "
            "AUPR-in / AUPR-out: average precision with the in-distribution / OOD set as positives; FPR95: the "
            "fraction of OOD inputs accepted at the threshold that keeps 95% of in-distribution inputs "
            "(lower is better).</p>"
        )
        roles = h.has("ood")
        for s in sets:
            desc = _get(report, ["settings", "ood_descriptions", s])
            h.add(f"<h3>{html.escape(s)}" + (f" <small>({html.escape(desc)})</small>" if desc else "") + "</h3>")
            head = "".join(f"<th colspan={len(OOD_METRICS)}>{h.label(r)}</th>" for r in roles)
            sub = "".join(f"<th>{m}</th>" for _ in roles for m in OOD_METRICS.values())
            h.add(f"<table><tr><th class=l rowspan=2>score</th>{head}</tr><tr>{sub}</tr>")
            scores = _union(report, lambda m, s=s: [k for k in m.get("ood", {}).get("sets", {}).get(s, {}) if k != "n"])
            for score in scores:
                cells = "".join(h.cell(["models", r, "ood", "sets", s, score, k]) for r in roles for k in OOD_METRICS)
                h.add(f"<tr><td class=l>{html.escape(score)}</td>{cells}</tr>")
            h.add("</table>")
        h.images("ood_histograms", "OOD score histograms")

    # Generation
    if h.has("generation"):
        h.add("<h2>Generation</h2>")
        h.figures_table(
            [
                ("feature network", ["generation", "feature_label"]),
                ("samples from", ["generation", "source"]),
                ("SGLD steps (unconditional)", ["generation", "steps_unconditional"]),
                ("SGLD steps (conditional)", ["generation", "steps_conditional"]),
                ("class-conditional samples", ["generation", "conditional_protocol"]),
                ("real examples", ["generation", "n_real"]),
                ("generated examples", ["generation", "n_fake"]),
                ("FID", ["generation", "fid"]),
                ("KID (mean)", ["generation", "kid_mean"]),
                ("KID (std)", ["generation", "kid_std"]),
                ("Inception-style score (mean)", ["generation", "is_mean"]),
                ("Inception-style score (std)", ["generation", "is_std"]),
                ("FID of real training images (reference)", ["generation", "fid_real_reference"]),
                ("score of real training images (reference)", ["generation", "is_real_reference"]),
                ("conditional accuracy", ["generation", "conditional_accuracy"]),
                ("conditional samples per class", ["generation", "per_class"]),
                ("sample values outside [-1, 1] (clipped)", ["generation", "out_of_range"]),
            ]
        )
        h.add(
            "<p class=note>FID, KID and the Inception-style score use the feature network named above, not the "
            "Inception network of the literature (unless named so): compare them only with figures from the same "
            "network. The reference rows give what real training images score against the same real test set "
            "at this sample size. Conditional accuracy: the fraction of class-conditional samples that the "
            "feature network (an independent classifier) assigns to the class they were drawn for.</p>"
        )
        h.add("<h3>Unconditional samples</h3>")
        h.images("samples_unconditional", "unconditional samples", "grid")
        h.add("<h3>Class-conditional samples (one row per class)</h3>")
        h.images("samples_conditional", "class-conditional samples", "grid")

    # Robustness
    rob = h.has("robustness")
    if rob:
        h.add("<h2>Robustness</h2>")
        h.add(
            "<p class=note>Robust accuracy under PGD attacks of growing size eps (from <code>jem attack</code>): "
            "JEM-n classifies after n SGLD refinement steps, the attack differentiating through them.</p>"
        )
        h.add('<div class="row">')
        for r in rob:
            res = report["models"][r]["robustness"]
            h.add(f'<div class="col"><h3>{h.label(r)}</h3>')
            h.add(
                f"<p class=note>norm {html.escape(str(res.get('norm', '?')))}, "
                f"{html.escape(str(res.get('n', '?')))} test inputs</p>"
            )
            eps = res.get("eps", [])
            h.add("<table><tr><th class=l>setting \\ eps</th>" + "".join(f"<th>{e:g}</th>" for e in eps) + "</tr>")
            for name in res.get("curves", {}):
                cells = "".join(h.cell(["models", r, "robustness", "curves", name, i]) for i in range(len(eps)))
                h.add(f"<tr><td class=l>{html.escape(name)}</td>{cells}</tr>")
            h.add("</table>")
            distal = res.get("distal")
            if isinstance(distal, dict):
                flat = _flatten(distal)
                if flat:
                    h.add("<table><tr><th class=l>distal adversarials</th><th>value</th></tr>")
                    for path, _ in flat:
                        name = " / ".join(map(str, path))
                        cell = h.cell(["models", r, "robustness", "distal", *path])
                        h.add(f"<tr><td class=l>{html.escape(name)}</td>{cell}</tr>")
                    h.add("</table>")
            h.add(h.img(report["models"][r].get("png", {}).get("robust_accuracy"), f"robust accuracy ({r})"))
            h.add("</div>")
        h.add("</div>")
    # Training dynamics
    dyn = h.has("dynamics")
    if dyn:
        h.add("<h2>Training dynamics</h2>")
        h.figures_table(
            [
                ("last step", ["dynamics", "steps"]),
                ("recoveries (rewinds after a divergence)", ["dynamics", "recoveries"]),
                ("gave up", ["dynamics", "gave_up"]),
                ("first divergence at step", ["dynamics", "first_trouble_step"]),
                ("final loss", ["dynamics", "final", "loss"]),
                ("final training accuracy", ["dynamics", "final", "acc"]),
                ("final energy of data", ["dynamics", "final", "energy_data"]),
                ("final energy of samples", ["dynamics", "final", "energy_sample"]),
                ("final energy gap (samples - data)", ["dynamics", "final", "energy_gap"]),
                ("final learning rate", ["dynamics", "final", "lr"]),
            ],
            dyn,
        )
        h.add(
            "<p class=note>From each run's <code>metrics.jsonl</code>, over training steps: the loss, the training "
            "accuracy (window means) and the validation accuracy, the energy -log p(x) (up to a constant) of data "
            "and of SGLD samples and their gap (samples - data; a classifier-only run has no p(x) term and no "
            "energies), the learning rate. The final figures are the last logged window's means. Red dashed "
            "line: a divergence, after which training rewound to the last good state (the shaded span reaches "
            "back to it, the arrow on the top panel points there, #n is the retry) with a smaller learning rate; "
            "faint dashed lines: the records of the steps that were rewound and done again. Black dotted line "
            "with an X: the run gave up after its last allowed recovery.</p>"
        )
        h.images("dynamics", "training dynamics", roles=dyn)
    h.add("<p class=note>Every figure on this page is in report.json (a cell's <code>data-key</code> is its path).</p>")
    h.add("</body></html>")
    return "\n".join(h.parts)


def _union(report: dict, keys) -> list[str]:
    out: list[str] = []
    for m in report["models"].values():
        out += [k for k in keys(m) if k not in out]
    return out


def _flatten(d: dict, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, number) of every scalar number in a nested dict."""
    out: list[tuple[tuple, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, (*prefix, k))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(((*prefix, k), v))
    return out


# -- writing ----------------------------------------------------------------------------------
def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the PNGs, report.json and report.html into ``out_dir``; returns their paths.

    Each model result gains "png": {figure: file name in out_dir}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for role, m in report["models"].items():
        label = m.get("label", role)
        png = m.setdefault("png", {})
        if m.get("calibration"):
            png["reliability"] = plot_reliability(m["calibration"], out / f"{role}_reliability.png", label).name
        if m.get("ood") and m["ood"].get("arrays"):
            png["ood_histograms"] = plot_ood_histograms(m["ood"], out / f"{role}_ood_histograms.png", label).name
        arrays = (m.get("generation") or {}).get("arrays")
        if arrays:
            png["samples_unconditional"] = save_samples(
                arrays["unconditional"][:100], out / f"{role}_samples_unconditional.png"
            ).name
            png["samples_conditional"] = save_samples(
                arrays["conditional"], out / f"{role}_samples_conditional.png", nrow=m["generation"]["per_class"]
            ).name
        rob = m.get("robustness")
        if rob and rob.get("png_path") and Path(rob["png_path"]).is_file():
            dst = out / f"{role}_robust_accuracy.png"
            if Path(rob["png_path"]).resolve() != dst.resolve():
                shutil.copyfile(rob["png_path"], dst)
            png["robust_accuracy"] = dst.name
        dyn = m.get("dynamics")
        if dyn and (dyn.get("arrays") or {}).get("records"):
            png["dynamics"] = plot_dynamics(dyn["arrays"]["records"], out / f"{role}_dynamics.png", label).name
        for key, name in png.items():
            paths[f"{role}_{key}"] = out / name
    clean = strip_arrays(report)
    atomic_write_text(out / "report.json", json.dumps(clean, indent=2))
    atomic_write_text(out / "report.html", render_html(clean, out))
    paths["json"], paths["html"] = out / "report.json", out / "report.html"
    return paths
