"""`lmscope neurons`: the best neurons per label, their cards, vocabulary projections and ablations."""

from __future__ import annotations

from ..features.neuron_report import NeuronsOptions
from .flags import add_flags, add_model_flag, build

HELP = "the best neurons per label: unit cards, vocabulary projections, ablations -> run folder"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, NeuronsOptions)


def run(args) -> None:
    from dataclasses import asdict

    from ..features.neuron_report import run_neurons
    from ..model import load

    opts = build(NeuronsOptions, args)
    result = run_neurons(load(args.model), **asdict(opts))
    for name, e in result["ablations"].items():
        print(
            f"  zero {name:12s} ({e['feature']}): loss {e['in_context']:+.4f} on {e['feature']} text, "
            f"{e['out_of_context']:+.4f} on the rest"
        )
    print(f"wrote {opts.out}")
