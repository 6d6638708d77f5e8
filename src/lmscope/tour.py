"""`lmscope tour`: the README's main job. For now: load the bundled model, show its architecture and sites,
and run the IOI prompt with its top predictions and the logit difference " Mary" - " John"."""

from __future__ import annotations

import time

import torch

from .data.tasks import single_token_id as single_token
from .model import Model, load
from .model.sites import split_site

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def top_predictions(model: Model, logits: torch.Tensor, k: int) -> list[tuple[str, float]]:
    """The k most likely next tokens after the last position of logits [pos, d_vocab], with probabilities."""
    probs = logits[-1].float().softmax(-1)
    values, ids = probs.topk(k)
    return [(model.to_string([i]), float(p)) for p, i in zip(values.tolist(), ids.tolist())]


def describe(model: Model) -> str:
    c = model.cfg
    per_layer = sorted(
        {split_site(s)[1] for s in model.sites if s.startswith("blocks.")},
        key=lambda s: model.sites.index(f"blocks.0.{s}"),
    )
    return "\n".join(
        [
            f"model        {c.name} ({c.architecture} adapter)",
            f"layers       {c.n_layers}, d_model {c.d_model}, d_mlp {c.d_mlp}, vocab {c.d_vocab}",
            f"attention    {c.n_heads} heads of {c.d_head}, {c.n_kv_heads} key/value heads, {c.positional} positions",
            f"norm / mlp   {c.normalization} norm, {'gated ' if c.gated_mlp else ''}{c.act_fn} MLP",
            f"sites        {len(model.sites)}: embed, blocks.{{0..{c.n_layers - 1}}}.{{{', '.join(per_layer)}}}, final.norm, logits",
        ]
    )


def run_tour(model_name: str | None = None, top_k: int = 5, out=print) -> dict:
    start = time.perf_counter()
    model = load(model_name)
    out(f"Loaded in {time.perf_counter() - start:.1f} s.\n")
    out(describe(model))
    out(f"\nIOI prompt: {IOI_PROMPT!r}")
    out("tokens: " + " | ".join(model.to_str_tokens(IOI_PROMPT)))
    with torch.no_grad():
        logits, cache = model.run_with_cache(IOI_PROMPT, sites=["blocks.*.resid_post"])
    out(f"\nTop {top_k} next tokens:")
    for text, p in top_predictions(model, logits[0], top_k):
        out(f"  {text!r:>12}  {p:.3f}")
    mary, john = single_token(model, " Mary"), single_token(model, " John")
    logit_diff = float(logits[0, -1, mary] - logits[0, -1, john])
    out(
        f"\nlogit(' Mary') - logit(' John') = {logit_diff:+.3f}  (positive: the model picks the indirect object)"
    )
    resid = cache.stack("resid_post")  # [layer, batch, pos, d_model]
    out(
        f"cached resid_post for {resid.shape[0]} layers: {tuple(resid.shape)}, {cache.nbytes / 2**20:.1f} MiB"
    )
    return {"logit_diff": logit_diff, "top": top_predictions(model, logits[0], top_k)}
