"""`lmscope tour`: every capability once, small, then the explorer over the results."""

from __future__ import annotations

from ..tour import TourOptions
from .flags import add_flags, add_model_flag, build

HELP = "the guided tour: corpus, neurons, SAE, IOI, DAS audit, then the explorer"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, TourOptions)


def run(args) -> None:
    from dataclasses import asdict

    from ..tour import run_tour

    run_tour(args.model, **asdict(build(TourOptions, args)))
