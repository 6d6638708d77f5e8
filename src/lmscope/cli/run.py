"""`lmscope run`: run a prompt and show the top next-token predictions."""

from __future__ import annotations

from dataclasses import dataclass, field

from .flags import add_flags, add_model_flag, build

HELP = "run a prompt and show the top next-token predictions"


@dataclass
class RunOptions:
    """Here, not in the library: a forward pass and top_predictions are all this command does."""

    text: str = field(metadata={"positional": True, "help": "the prompt"})
    top_k: int = field(default=5, metadata={"help": "predictions to show"})


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, RunOptions)


def run(args) -> None:
    import torch

    from ..model import load
    from ..tour import top_predictions

    opts = build(RunOptions, args)
    if not opts.text.strip():
        raise ValueError('empty prompt: give some text, e.g. lmscope run "The capital of France is"')
    model = load(args.model)
    print("tokens: " + " | ".join(model.to_str_tokens(opts.text)))
    with torch.no_grad():
        logits = model(opts.text)
    for text, p in top_predictions(model, logits[0], opts.top_k):
        print(f"  {text!r:>16}  {p:.4f}")
