"""`lmscope info`: the model's architecture and where lmscope caches it."""

from __future__ import annotations

from .flags import add_model_flag

HELP = "the model's architecture and where lmscope caches it"


def add_arguments(parser) -> None:
    add_model_flag(parser)


def run(args) -> None:
    from ..model import cache_root, load
    from ..tour import describe

    model = load(args.model)
    print(describe(model))
    if model.adapter.notes:
        print(f"notes        {model.adapter.notes}")
    print(f"cache        {cache_root()}")
