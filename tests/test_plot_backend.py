"""Importing torchjem leaves the user's matplotlib backend alone: the plots use matplotlib's
object-oriented API (Figure, matplotlib.image.imsave), never pyplot or matplotlib.use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import rcParams
from matplotlib.image import imread

import torchjem
from torchjem import grids, report
from torchjem.evaluate.results import CalibrationResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SRC = Path(torchjem.__file__).resolve().parent

# Runs in a fresh interpreter: records every `import matplotlib.pyplot` / `from matplotlib import
# pyplot` statement and the file it is in (a builtins.__import__ wrapper sees each statement, also
# when the module is already loaded), then imports torchjem's plotting modules.
PROBE = r"""
import builtins, json, sys
import matplotlib
matplotlib.use("svg")
importers = []
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    if name == "matplotlib.pyplot" or (name == "matplotlib" and fromlist and "pyplot" in fromlist):
        importers.append(sys._getframe(1).f_code.co_filename)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spy
out = {}
import torchjem.grids, torchjem.report
out["backend_after_plot_modules"] = matplotlib.get_backend()
out["pyplot_after_plot_modules"] = "matplotlib.pyplot" in sys.modules
import torchjem.workflows.demo, torchjem.workflows.attack
out["backend_after_workflows"] = matplotlib.get_backend()
out["importers"] = importers
print(json.dumps(out))
"""


@pytest.mark.slow
def test_importing_torchjem_keeps_the_matplotlib_backend_and_never_imports_pyplot() -> None:
    env = {**os.environ, "MPLBACKEND": "svg"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend_after_plot_modules"] == "svg"  # the old modules switched to Agg on import
    assert out["pyplot_after_plot_modules"] is False
    assert out["backend_after_workflows"] == "svg"
    # torchmetrics imports pyplot itself (without switching the backend); torchjem's files never do
    ours = [f for f in out["importers"] if Path(f).resolve().is_relative_to(SRC)]
    assert ours == [], f"torchjem files import pyplot: {ours}"


def test_no_source_file_uses_pyplot_or_switches_the_backend() -> None:
    bad = re.compile(r"matplotlib\.pyplot|from matplotlib import [^\n]*\bpyplot\b|matplotlib\.use\(|\bplt\.")
    hits = [f"{p.relative_to(SRC)}: {m.group(0)}" for p in SRC.rglob("*.py") for m in bad.finditer(p.read_text())]
    assert hits == []


def _png(path: Path) -> np.ndarray:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return imread(path)


def test_save_grid_writes_a_png_of_the_laid_out_size(tmp_path: Path) -> None:
    # 8 greyscale 8x8 images, 4 per row, 1-pixel padding: a 19 x 37 grid, upscaled by 256 // 37 = 6
    x = torch.linspace(-1, 1, 8 * 64).reshape(8, 1, 8, 8)
    img = _png(grids.save_grid(x, tmp_path / "grid.png", nrow=4))
    grid_h, grid_w, scale, dpi = 2 * 9 + 1, 4 * 9 + 1, 256 // 37, 96
    fig_w, fig_h = grid_w * scale / 64, grid_h * scale / 64  # inches, as save_grid sizes the figure
    # the axes box (matplotlib's default subplot margins) shrinks to the grid's aspect ratio; the
    # tight bounding box is that box plus savefig.pad_inches on each side
    box_w = fig_w * (rcParams["figure.subplot.right"] - rcParams["figure.subplot.left"])
    box_h = fig_h * (rcParams["figure.subplot.top"] - rcParams["figure.subplot.bottom"])
    aspect = grid_h / grid_w
    w_in, h_in = (box_w, box_w * aspect) if box_h / box_w > aspect else (box_h / aspect, box_h)
    pad = 2 * rcParams["savefig.pad_inches"]
    assert img.shape[0] == pytest.approx((h_in + pad) * dpi, abs=2)
    assert img.shape[1] == pytest.approx((w_in + pad) * dpi, abs=2)
    assert img.shape[1] > img.shape[0]  # the grid is wider than tall
    assert _png(grids.save_grid(torch.zeros(3, 2, 40), tmp_path / "signals.png")).ndim == 3  # 1-D signals


def test_report_pngs_have_the_figure_size(tmp_path: Path) -> None:
    edges = np.linspace(0, 1, 11)
    cal = CalibrationResult(
        ece=0.05,
        mce=0.2,
        n_bins=10,
        n=45,
        accuracy=0.7,
        confidence=0.75,
        bins={
            "edges": edges.tolist(),
            "accuracy": np.linspace(0.1, 0.9, 10).tolist(),
            "confidence": (edges[1:] - 0.05).tolist(),
            "count": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        },
    )
    img = _png(report.plot_reliability(cal, tmp_path / "rel.png", "run"))
    assert img.shape[:2] == (int(4.8 * 96), int(4.2 * 96))  # figsize (4.2, 4.8) inches at 96 dpi
    # save_samples: a 2 x 3 grid of 8x8 images (19 x 28 pixels) scaled by 480 // 28 = 17, no margins
    x = torch.linspace(-1, 1, 6 * 64).reshape(6, 1, 8, 8)
    img = _png(report.save_samples(x, tmp_path / "samples.png", nrow=3))
    assert img.shape[:2] == (19 * 17, 28 * 17)
    # the pixels are the images: the first image's top-left value (-1 -> 0) after the 17-pixel padding
    assert img[17, 17, 0] == pytest.approx(0.0, abs=1 / 255)
    assert img[0, 0, 0] == pytest.approx(1.0)  # the padding is white
    curves = _png(report.plot_curves({"JEM-0": [0.9, 0.5]}, [0.0, 0.1], "linf", tmp_path / "c.png"))
    assert curves.shape[:2] == (int(3.6 * 96), int(5 * 96))  # figsize (5, 3.6) at the report's 96 dpi
