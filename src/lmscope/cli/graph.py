"""`lmscope graph "PROMPT" --target TOKEN --transcoders PATH`: an attribution graph, checked by ablations."""

from __future__ import annotations

from ..graphs.run import GraphOptions
from .flags import add_flags, add_model_flag, build

HELP = "attribution graph of a prompt's target logit over transcoder features, checked by interventions"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, GraphOptions)


def run(args) -> None:
    from ..graphs.run import write_graph_run
    from ..model import load

    opts = build(GraphOptions, args)
    out = write_graph_run(load(args.model), opts)
    print(f"wrote {out / 'report.html'}")
