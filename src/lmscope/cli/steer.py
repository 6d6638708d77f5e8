"""`lmscope steer`: steer along directions at several scales; intended effect vs side effects -> run folder."""

from __future__ import annotations

import argparse

from ..steering.run import SteerOptions
from .flags import add_flags, add_model_flag, build

HELP = "steer along directions (SAE feature, DAS, probe, neuron, mean difference): effect vs side effects"


def add_arguments(parser) -> None:
    from ..steering import run as steering_run

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = steering_run.__doc__.split("\n", 2)[2]  # the direction specs
    add_model_flag(parser)
    add_flags(parser, SteerOptions)


def run(args) -> None:
    from ..model import load
    from ..steering.report import summary_rows
    from ..steering.run import run_steer

    opts = build(SteerOptions, args)
    model = load(args.model)
    results, out = run_steer(model, opts, model_name=args.model or "SmolLM2-135M-Instruct")
    for row in summary_rows(results):
        effect = "n/a" if row["max effect"] is None else f"{row['max effect']:+.3f} at {row['at']}"
        kl = "n/a" if row["KL there"] is None else f"{row['KL there']:.3f}"
        print(f"  {row['direction']:40s} max effect {effect}, KL there {kl}")
    print(f"wrote {out / 'report.html'}")
