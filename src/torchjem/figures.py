"""PNG figures of the HTML pages (the evaluation report, the sweep report, `jem sample`'s grids):
the one PNG writer (written atomically) and the embedding as data URIs, so that each page is one
self-contained file."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imsave

from .checkpoint import atomic_write_bytes

DPI = 96  # every figure of every page


def _write(buf: io.BytesIO, path: str | Path) -> Path:
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_png(fig: Figure, path: str | Path, *, tight: bool = False) -> Path:
    """Write ``fig`` as a PNG at 96 dpi (the figures use constrained layout; ``tight``: cropped to
    the drawn area, for sample grids); returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, **({"bbox_inches": "tight"} if tight else {}))
    return _write(buf, path)


def save_image(img: np.ndarray, path: str | Path) -> Path:
    """Write an image array (H, W) grey or (H, W, 3) RGB, values in [0, 1], pixel for pixel (no
    axes, no resampling) as a PNG; returns the path."""
    buf = io.BytesIO()
    imsave(buf, img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, format="png")
    return _write(buf, path)


def png_img(path: str | Path, alt: str, cls: str = "") -> str:
    """An <img> element holding the PNG at ``path`` as a base64 data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    cls = f' class="{cls}"' if cls else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
