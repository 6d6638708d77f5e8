"""Self-contained HTML: a table, a page of sections (figures, tables, text), and an atomic save.

Pages carry their CSS inline and load nothing from anywhere: they open the same offline, in a browser,
attached to an e-mail, or years later.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from ..runs import write_atomic
from .svg import Figure, _esc

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1f2328;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 36px 56px; background: #ffffff; min-height: 100vh;
  box-sizing: border-box; }
h1 { font-size: 1.7em; line-height: 1.25; margin: 0.2em 0 0.1em; }
.subtitle { color: #57606a; margin: 0 0 1.2em; }
h2 { font-size: 1.25em; margin: 1.8em 0 0.6em; padding-bottom: 0.25em; border-bottom: 1px solid #e5e7eb; }
p { margin: 0.5em 0; max-width: 80ch; white-space: pre-wrap; }
figure { margin: 0.8em 0; overflow-x: auto; }
figure svg { display: block; max-width: none; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e5e7eb; text-align: left; white-space: pre-wrap;
  vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num { text-align: right; }
tbody tr:hover td { background: #f9fafb; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.92em; }
"""


@dataclass(frozen=True)
class Text:
    """Plain text for a page section. It is escaped; blank lines separate paragraphs."""

    text: str


def _cell(value: object, float_format: str) -> tuple[str, bool]:
    """(escaped text, is_number) for one table cell. 0-d arrays and tensors are read with ``.item()``."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, numbers.Integral):
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        return _esc(float_format.format(float(value))), True
    return _esc(value), False


def table(
    rows: list[dict] | list[list], columns: list[str] | None = None, float_format: str = "{:.3f}"
) -> str:
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
    out = ["<table>"]
    if columns is not None:
        out.append("<thead><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>")
    for r in cells:
        tds = []
        for value in r:
            text, is_number = _cell(value, float_format)
            tds.append(f'<td class="num">{text}</td>' if is_number else f"<td>{text}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _content(content: object, heading: str) -> str:
    if isinstance(content, Figure):
        return f"<figure>{content.svg}</figure>"
    if isinstance(content, Text):
        paragraphs = [p.strip("\n") for p in content.text.split("\n\n") if p.strip()]
        return "\n".join(f"<p>{_esc(p)}</p>" for p in paragraphs)
    if isinstance(content, str):
        return content  # HTML, inserted as is
    if isinstance(content, (list, tuple)):
        return "\n".join(_content(c, heading) for c in content)
    raise TypeError(
        f"section {heading!r}: content must be a Figure, Text, an HTML string, or a list of those; "
        f"got {type(content).__name__}"
    )


def page(title: str, sections: list[tuple[str, object]], subtitle: str = "") -> str:
    """A complete, self-contained HTML document.

    ``sections``: (heading, content) pairs; content is a :class:`Figure`, a :class:`Text`, an HTML string
    (e.g. from :func:`table`), or a list of those. An empty heading adds no ``<h2>``.
    """
    body = [f"<h1>{_esc(title)}</h1>"]
    if subtitle:
        body.append(f'<p class="subtitle">{_esc(subtitle)}</p>')
    for item in sections:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"each section must be a (heading, content) pair; got {item!r:.80}")
        heading, content = item
        head = f"<h2>{_esc(heading)}</h2>\n" if heading else ""
        body.append(f"<section>\n{head}{_content(content, heading)}\n</section>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            *body,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


def save_page(html: str, path: str | os.PathLike) -> Path:
    """Write ``html`` to ``path`` (parent folders are created) via a temporary file and a rename."""
    return write_atomic(path, html)
