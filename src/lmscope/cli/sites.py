"""`lmscope sites`: every site (hookable activation) with its shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from .flags import add_flags, add_model_flag, build

HELP = "list every site (hookable activation) with its shape"


@dataclass
class SitesOptions:
    """Here, not in the library: listing the sites is all this command does (model.resolve_sites)."""

    filter: str | None = field(
        default=None, metadata={"help": "a glob such as 'blocks.3.*' or 'blocks.*.attn.z'"}
    )


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, SitesOptions)


def run(args) -> None:
    from ..model import load
    from ..model.sites import site_shape

    opts = build(SitesOptions, args)
    model = load(args.model)
    names = model.resolve_sites([opts.filter]) if opts.filter else model.sites
    for name in names:
        print(f"{name:32s} {site_shape(model.cfg, name)}")
