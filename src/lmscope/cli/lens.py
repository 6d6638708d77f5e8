"""`lmscope lens`: logit lens and tuned lens, KL and rank per layer, and one prompt's picture."""

from __future__ import annotations

from ..circuits.lens import TrainConfig
from ..circuits.lens_report import LensOptions
from .flags import add_flags, add_model_flag, build

HELP = "logit lens and tuned lens: KL and rank per layer, a prompt's picture"
TRAIN_FLAGS = ("steps", "batch_size", "lr", "seed")


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, LensOptions)
    add_flags(
        parser,
        TrainConfig,
        only=TRAIN_FLAGS,
        helps={
            "steps": "tuned-lens training steps",
            "batch_size": "tokens per training step",
            "lr": "learning rate (decays linearly to 0)",
        },
    )


def run(args) -> None:
    from dataclasses import asdict

    from ..circuits.lens_report import write_lens_run
    from ..model import load

    opts = build(LensOptions, args)
    model = load(args.model)
    out = write_lens_run(
        model,
        cfg=build(TrainConfig, args),
        out_dir=opts.out,
        **{k: v for k, v in asdict(opts).items() if k != "out"},
    )
    print(f"wrote {out / 'report.html'}")
