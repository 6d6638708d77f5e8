"""`lmscope export`: one explorer page as a self-contained HTML file."""

from __future__ import annotations

from ..explorer.serve import ExportOptions
from .flags import add_flags, build

HELP = "write one explorer page as a self-contained HTML file"


def add_arguments(parser) -> None:
    add_flags(parser, ExportOptions)


def run(args) -> None:
    from ..explorer import export_page

    opts = build(ExportOptions, args)
    print(f"wrote {export_page(opts.run_dir, opts.page, opts.out, model=opts.model)}")
