"""`lmscope lab train`: train a small transformer from scratch -> run folder of Hugging Face checkpoints."""

from __future__ import annotations

from ..lab.config import LabConfig, LabTrainOptions
from .flags import add_flags, build

HELP = "train a small transformer from scratch (log-spaced HF checkpoints, resumable)"


def add_arguments(parser) -> None:
    add_flags(parser, LabTrainOptions)
    add_flags(parser, LabConfig)


def run(args) -> None:
    from ..lab import train_model

    opts = build(LabTrainOptions, args)
    cfg = build(LabConfig, args)
    result = train_model(cfg, opts.out, corpus=opts.corpus, tokenizer=opts.tokenizer, resume=opts.resume)
    m = result.metrics
    print(
        f"held-out loss {m['heldout_loss']:.3f} nats/token; unigram baseline {m['unigram_loss']:.3f} "
        f"({m['vocab_size']} tokens, {m['n_params']:,} parameters, {m['train_tokens']:,} train tokens)"
    )
    for row in m["checkpoints"]:
        print(f"  step {row['step']:>6d}  held-out {row['heldout_loss']:.3f}")
    print(f"wrote {result.out} (load a checkpoint with ls.load('{result.checkpoints[-1]}'))")
