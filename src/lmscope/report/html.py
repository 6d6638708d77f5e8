"""Self-contained HTML: a table, a page of sections (figures, tables, text), and an atomic save.

Pages carry their CSS inline (templates/page.css) and load nothing from anywhere: they open the same
offline, in a browser, attached to an e-mail, or years later. The markup is in templates/page.html and
templates/table.html; this module only turns values into what those templates show.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from ..runs import write_atomic
from .markup import Markup, render


@dataclass(frozen=True)
class Text:
    """Plain text for a page section. It is escaped; blank lines separate paragraphs."""

    text: str


def _cell(value: object, float_format: str) -> tuple[str, bool]:
    """(text, is_number) for one table cell. 0-d arrays and tensors are read with ``.item()``."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, numbers.Integral):
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        return float_format.format(float(value)), True
    return str(value), False


def table(
    rows: list[dict] | list[list], columns: list[str] | None = None, float_format: str = "{:.3f}"
) -> Markup:
    """An HTML ``<table>``. ``rows``: dicts (column -> value) or lists (one value per column).

    For dict rows ``columns`` picks and orders the columns (default: keys in order of first appearance);
    for list rows it is the header (default: no header). Floats use ``float_format``; all text is escaped.
    """
    rows = list(rows)
    if any(isinstance(r, dict) for r in rows):
        if not all(isinstance(r, dict) for r in rows):
            raise TypeError("table rows must be all dicts or all lists, not a mix")
        if columns is None:
            columns = list(dict.fromkeys(k for r in rows for k in r))
        cells = [[r.get(c) for c in columns] for r in rows]
    else:
        cells = [list(r) for r in rows]
        for i, r in enumerate(cells):
            if columns is not None and len(r) != len(columns):
                raise ValueError(
                    f"row {i} has {len(r)} cells; expected {len(columns)}, one per column {columns}"
                )
    shown = [[_cell(value, float_format) for value in r] for r in cells]
    return Markup(render("table.html", columns=columns, rows=shown))


def _items(content: object, heading: str) -> list[tuple[str, object]]:
    """A section's content as (kind, value) pairs for page.html: figure, text (paragraphs) or html."""
    if isinstance(getattr(content, "svg", None), str):  # a Figure (not imported: svg.py imports this module)
        return [("figure", Markup(content.svg))]
    if isinstance(content, Text):
        return [("text", [p.strip("\n") for p in content.text.split("\n\n") if p.strip()])]
    if isinstance(content, str):
        return [("html", Markup(content))]  # HTML, inserted as is
    if isinstance(content, (list, tuple)):
        return [item for c in content for item in _items(c, heading)]
    raise TypeError(
        f"section {heading!r}: content must be a Figure, Text, an HTML string, or a list of those; "
        f"got {type(content).__name__}"
    )


def page(title: str, sections: list[tuple[str, object]], subtitle: str = "") -> str:
    """A complete, self-contained HTML document.

    ``sections``: (heading, content) pairs; content is a :class:`Figure`, a :class:`Text`, an HTML string
    (e.g. from :func:`table`), or a list of those. An empty heading adds no ``<h2>``.
    """
    shown = []
    for item in sections:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"each section must be a (heading, content) pair; got {item!r:.80}")
        heading, content = item
        shown.append((heading, _items(content, heading)))
    return render("page.html", title=title, subtitle=subtitle, sections=shown)


def save_page(html: str, path: str | os.PathLike) -> Path:
    """Write ``html`` to ``path`` (parent folders are created) via a temporary file and a rename."""
    return write_atomic(path, html)
