"""`lmscope sae train|eval|features`: sparse autoencoders as run folders."""

from __future__ import annotations

from ..features.sae.run import SAECommand
from .flags import add_flags, add_model_flag, build

HELP = "sparse autoencoders: train, evaluate, feature cards -> run folder"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, SAECommand)


def run(args) -> None:
    from ..features.sae.run import sae_command

    print(sae_command(build(SAECommand, args), args.model))
