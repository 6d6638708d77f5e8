"""`lmscope toy`: toy models of superposition (Elhage et al. 2022) -> run folder."""

from __future__ import annotations

from ..toy.report import ToyOptions
from .flags import add_flags, build

HELP = "toy models of superposition (Elhage et al. 2022) -> run folder"


def add_arguments(parser) -> None:
    add_flags(parser, ToyOptions)


def run(args) -> None:
    from pathlib import Path

    from ..toy import run_toy, save_toy_run

    opts = build(ToyOptions, args)
    if Path(opts.out).is_file():  # before training, not after
        raise ValueError(f"--out {opts.out} is a file; give a folder for the run")
    results = run_toy(
        n_features=opts.n_features,
        n_hidden=opts.n_hidden,
        sparsities=opts.sparsities,
        importance=opts.importance,
        n_seeds=opts.n_seeds,
        phase=opts.phase,
        compute=opts.compute,
        seed=opts.seed,
        device=opts.device,
        **opts.train_config(),
    )
    for row in results.relu.measures():
        print(
            f"  S={row['sparsity']:<6g} ReLU represents {row['n_represented']:2d} of {opts.n_features} features"
        )
    if results.phase is not None:
        print(f"phase diagram: {results.phase.counts()}")
    print(f"wrote {save_toy_run(results, opts.out)}")
