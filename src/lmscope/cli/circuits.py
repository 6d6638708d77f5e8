"""`lmscope circuits`: QK/OV circuits, copying and composition scores, virtual weights -> run folder."""

from __future__ import annotations

from ..circuits.circuits_report import CircuitsOptions
from .flags import add_flags, add_model_flag, build

HELP = "QK/OV circuits, copying scores, composition scores, virtual weights"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, CircuitsOptions)


def run(args) -> None:
    from ..circuits.circuits_report import write_circuits_run
    from ..model import load

    opts = build(CircuitsOptions, args)
    model = load(args.model)
    out = write_circuits_run(model, opts.out, heads=opts.heads or [], tokens=opts.tokens, offset=opts.offset)
    print(f"wrote {out / 'report.html'}")
