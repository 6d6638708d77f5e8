"""Plain numbers in, pictures and self-contained HTML pages out.

This package draws and nothing else: it reads numpy arrays, nested lists, or anything with ``.tolist()``
(torch tensors), and writes inline SVG and HTML (Jinja2 templates in ``templates/``) that load no external
resource. Saving goes through ``lmscope.runs`` (atomic writes); no other part of lmscope is used.

    fig = heatmap(scores, row_labels=layers, col_labels=tokens, title="Patching effect")
    save_page(page("Run 12", [("Effect", fig), ("Top heads", table(rows))]), "report.html")
"""

from .html import Text, page, save_page, table
from .markup import Markup, esc, render
from .svg import Figure, bar_chart, heatmap, histogram, line_chart, scatter
from .tokens import act_color, example_html, token_spans

__all__ = [
    "Figure",
    "Markup",
    "Text",
    "act_color",
    "bar_chart",
    "esc",
    "example_html",
    "heatmap",
    "histogram",
    "line_chart",
    "page",
    "render",
    "save_page",
    "scatter",
    "table",
    "token_spans",
]
