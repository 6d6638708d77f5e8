"""`lmscope explore`: browse run folders in a browser (or write one page with --export)."""

from __future__ import annotations

from ..explorer.serve import ExploreOptions
from .flags import add_flags, build

HELP = "browse run folders (neurons, SAE features, probes, reports) in a browser"


def add_arguments(parser) -> None:
    add_flags(parser, ExploreOptions)


def run(args) -> None:
    from ..explorer import export_page, serve

    opts = build(ExploreOptions, args)
    if opts.export:
        print(f"wrote {export_page(opts.run_dir, opts.export, opts.out, model=opts.model)}")
    else:
        serve(opts.run_dir, host=opts.host, port=opts.port, model=opts.model)
