"""`lmscope harvest`: store activations of sites over a corpus (sharded, resumable)."""

from __future__ import annotations

from ..data.store import HarvestOptions
from .flags import add_flags, add_model_flag, build

HELP = "store activations of sites over a corpus (sharded, resumable)"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, HarvestOptions)


def run(args) -> None:
    from ..data.store import harvest_corpus
    from ..model import cache_root, load

    opts = build(HarvestOptions, args)
    model = load(args.model)
    store = harvest_corpus(
        model,
        opts.sites,
        opts.out or cache_root() / "stores" / "default",
        corpus=opts.corpus,
        split=None if opts.split == "all" else opts.split,
        labels=opts.labels,
        ctx_len=opts.ctx_len,
        max_contexts=opts.max_contexts,
        dtype=opts.dtype,
        batch_size=opts.batch_size,
        shard_tokens=opts.shard_tokens,
        resume=opts.resume,
    )
    print(f"{store.n_tokens} tokens x {len(store.sites)} sites in {store.n_shards} shards: {store.path}")
