"""Plain numbers in, pictures and self-contained HTML pages out.

This package knows nothing about the rest of lmscope: it reads numpy arrays, nested lists, or anything with
``.tolist()`` (torch tensors), and writes inline SVG and HTML that load no external resource.

    fig = heatmap(scores, row_labels=layers, col_labels=tokens, title="Patching effect")
    save_page(page("Run 12", [("Effect", fig), ("Top heads", table(rows))]), "report.html")
"""

from .html import Text, page, save_page, table
from .svg import Figure, bar_chart, heatmap, histogram, line_chart, scatter

__all__ = [
    "Figure",
    "Text",
    "bar_chart",
    "heatmap",
    "histogram",
    "line_chart",
    "page",
    "save_page",
    "scatter",
    "table",
]
