"""The evaluation report: report.json (every figure), report.html (self-contained: the PNGs are
embedded) and the PNGs themselves, with one column per model (the run and its baseline).

``write_report(report, out_dir)`` takes the dict that ``torchjem.evaluate.suite.evaluate_run``
builds: {"title", "created", "settings", "data", "models": {role: model_result}}, where each
model_result holds "classification", "calibration", "ood", "generation" and "robustness"
sections (any may be missing). Arrays for plots live under "arrays" keys; they go into the PNGs,
not into report.json. Every number the HTML shows is rendered from report.json's content, and its
table cell names its JSON path (``data-key``), so the two cannot disagree.

Plots use matplotlib's object-oriented API (``Figure``, ``matplotlib.image.imsave``; no pyplot),
so importing this module leaves the user's matplotlib backend as it is.
"""

from __future__ import annotations

import base64
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
from matplotlib.ticker import MaxNLocator

from .checkpoint import atomic_write_bytes, atomic_write_text
from .errors import InputError

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
def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)  # the figures use constrained layout
    atomic_write_bytes(path, buf.getvalue())
    return path


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
    return _save(fig, Path(path))


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
    return _save(fig, Path(path))


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
    return _save(fig, Path(path))


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
        data = base64.b64encode((self.out / name).read_bytes()).decode()
        return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

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

    def images(self, key: str, alt: str, cls: str = "") -> None:
        self.add('<div class="row">')
        for r in self.roles:
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
        for key, name in png.items():
            paths[f"{role}_{key}"] = out / name
    clean = strip_arrays(report)
    atomic_write_text(out / "report.json", json.dumps(clean, indent=2))
    atomic_write_text(out / "report.html", render_html(clean, out))
    paths["json"], paths["html"] = out / "report.json", out / "report.html"
    return paths
