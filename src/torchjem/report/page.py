"""The one HTML page builder of torchjem's reports (the evaluation report, the sweep report): the
CSS, how a number is printed, JSON cleaning (NaN -> null), tables whose cells name the JSON path of
the figure they show, embedded PNGs, and the atomic writes of a page and its JSON.

A page is built from its JSON document (what the report's .json file holds): ``Page.cell(path)``
prints the value at ``path`` in that document and tags the cell with the path (``data-key``), so
the page and the file cannot disagree. ``Page.td(value)`` is a plain cell for derived text.

    doc = clean_json({"title": "t", "rows": [{"acc": 0.91}]})
    page = Page(doc["title"], out_dir, doc)
    page.h2("Accuracy")
    page.table(["run", "accuracy"], [[page.td("a", "l"), page.cell(["rows", 0, "acc"])]])
    write_page(out_dir / "x.html", page)
"""

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

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
td.na{color:#888;font-style:italic}tr.bad td{background:#fdecea}tr.warn td{background:#fff8e1}
.row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.col{flex:1;min-width:300px}.col img{max-width:100%}.col img.grid{width:100%;max-width:480px;image-rendering:pixelated}
img.wide{max-width:100%;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}
code{background:#f3f3f3;padding:0 .2em}
"""
MISSING = "n/a"  # how a missing figure (None, NaN) is printed


def esc(value: Any) -> str:
    """``value`` as HTML text (escaped)."""
    return html.escape(str(value))


def fmt(value: Any, spec: str | None = None, *, missing: str = MISSING) -> str:
    """How a figure is printed: None and NaN as ``missing``; bools and ints as they are; floats
    with ``spec`` when given, else 4 decimals (1 from 1000 on, 3 significant digits below 1e-3, so
    a learning rate or a KID is not shown as 0.0000); anything else as escaped text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float) and spec is not None:
        return f"{value:{spec}}"
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return esc(value)


def clean_json(obj: Any, *, drop: Sequence[str] = ("arrays",)) -> Any:
    """``obj`` as plain JSON data: results with ``to_dict()`` converted, the keys in ``drop``
    (plot arrays) left out of dicts, tuples as lists, tensors / numpy arrays and scalars as
    lists / numbers, NaN and inf as None (null), paths as strings, dict keys as strings."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): clean_json(v, drop=drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v, drop=drop) for v in obj]
    if isinstance(obj, np.generic) or hasattr(obj, "tolist"):
        return clean_json(obj.tolist(), drop=drop)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, doc: Any) -> Path:
    """Write ``doc`` (cleaned with ``clean_json``) as indented JSON, atomically; returns the path."""
    atomic_write_text(path, json.dumps(clean_json(doc), indent=2, allow_nan=False))
    return Path(path)


def get_path(doc: Any, path: Sequence[Any]) -> Any:
    """The value at ``path`` (dict keys and list indices) in ``doc``, or None where there is none."""
    for p in path:
        if isinstance(doc, dict):
            doc = doc.get(p)
        elif isinstance(doc, list) and isinstance(p, int) and 0 <= p < len(doc):
            doc = doc[p]
        else:
            return None
    return doc


class Page:
    """One self-contained HTML page over its JSON document ``doc``; PNGs are read from ``out_dir``
    and embedded. Add parts in reading order, then ``render()`` (or ``write_page``)."""

    def __init__(self, title: str, out_dir: str | Path, doc: Any = None) -> None:
        self.title, self.out, self.doc = title, Path(out_dir), doc
        self.parts: list[str] = []

    def add(self, markup: str) -> None:
        """Append raw HTML."""
        self.parts.append(markup)

    def h2(self, text: str) -> None:
        self.add(f"<h2>{esc(text)}</h2>")

    def h3(self, text: str, small: str | None = None) -> None:
        self.add(f"<h3>{esc(text)}" + (f" <small>({esc(small)})</small>" if small else "") + "</h3>")

    def note(self, markup: str) -> None:
        """A note paragraph (``markup`` is HTML: escape what it quotes)."""
        self.add(f"<p class=note>{markup}</p>")

    def value(self, path: Sequence[Any]) -> Any:
        """The figure at ``path`` in the page's document."""
        return get_path(self.doc, path)

    def cell(self, path: Sequence[Any], spec: str | None = None, *, missing: str = MISSING) -> str:
        """A <td> showing the figure at ``path`` in the document, tagged with that path (``data-key``)."""
        key = html.escape(json.dumps(list(path)), quote=True)
        return f'<td data-key="{key}">{fmt(self.value(path), spec, missing=missing)}</td>'

    @staticmethod
    def td(value: Any, cls: str = "", spec: str | None = None, *, missing: str = MISSING) -> str:
        """A plain <td> (text or a derived figure that is not itself in the document)."""
        return f"<td{f' class={cls}' if cls else ''}>{fmt(value, spec, missing=missing)}</td>"

    @staticmethod
    def th(markup: str, cls: str = "", span: str = "") -> str:
        """A <th> holding ``markup`` (HTML); ``span`` e.g. "colspan=4"."""
        attrs = (f" class={cls}" if cls else "") + (f" {span}" if span else "")
        return f"<th{attrs}>{markup}</th>"

    def table(self, header: Sequence[str] | Sequence[Sequence[str]], rows: Sequence[Sequence[str] | str]) -> None:
        """A table. ``header``: one row of header cells (``th`` markup, or text put in a <th> as it
        is), or several such rows; ``rows``: each a list of cells (``cell``, ``td``) or a ``row``."""
        head_rows = header if header and not isinstance(header[0], str) else [header]
        self.add("<table>")
        for hr in head_rows:
            self.add("<tr>" + "".join(h if h.startswith("<th") else f"<th>{h}</th>" for h in hr) + "</tr>")
        for r in rows:
            self.add(r if isinstance(r, str) and r.startswith("<tr") else "<tr>" + "".join(r) + "</tr>")
        self.add("</table>")

    @staticmethod
    def row(cells: Sequence[str], cls: str = "") -> str:
        """A <tr> of ``cells`` with an optional class (``bad``, ``warn``), for ``table``'s rows."""
        return f"<tr{f' class={cls}' if cls else ''}>" + "".join(cells) + "</tr>"

    def img(self, name: str | Path | None, alt: str, cls: str = "") -> str:
        """The PNG ``out_dir/name`` embedded, or a note when there is none."""
        if not name or not (self.out / name).is_file():
            return f'<p class="note">({esc(alt)}: no image)</p>'
        return png_img(self.out / name, alt, cls)

    def columns(self, cols: Sequence[tuple[str, str]]) -> None:
        """Side by side columns: (heading markup, body markup) each."""
        self.add('<div class="row">')
        for head, body in cols:
            self.add(f'<div class="col"><h3>{head}</h3>{body}</div>')
        self.add("</div>")

    def render(self) -> str:
        """The whole page."""
        title = esc(self.title)
        head = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
        return "\n".join([head + "<body>", f"<h1>{title}</h1>", *self.parts, "</body></html>"])


def write_page(path: str | Path, page: Page) -> Path:
    """Write ``page`` as an HTML file, atomically; returns the path."""
    atomic_write_text(path, page.render())
    return Path(path)


__all__ = ["CSS", "MISSING", "Page", "clean_json", "esc", "fmt", "get_path", "write_json", "write_page"]
