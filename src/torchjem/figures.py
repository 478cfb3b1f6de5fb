"""PNG figures of the HTML pages (the evaluation report, the sweep report): written atomically,
embedded as data URIs so that each page is one self-contained file."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from matplotlib.figure import Figure

from .checkpoint import atomic_write_bytes


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at 96 dpi (the figures use constrained layout); returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def png_img(path: str | Path, alt: str, cls: str = "") -> str:
    """An <img> element holding the PNG at ``path`` as a base64 data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    cls = f' class="{cls}"' if cls else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
