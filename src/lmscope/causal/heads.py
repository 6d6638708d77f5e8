"""Head inspection: direct logit attribution and where heads attend.

Direct logit attribution (DLA) of a component c (a head's output z_h W_O^h, an MLP's output, the embedding)
at the prediction position: c, passed through the final norm with the run's own normalisation scale held
fixed, dotted with W_U[:, answer] - W_U[:, wrong]. With the scale fixed the final norm is linear, so the
DLAs of all components plus the biases add up to the logit difference exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .result import GridResult


def _final_norm_linear(model, final_resid: Tensor):
    """f(c) = the final norm applied to component c with the scale of `final_resid` [n, d] held fixed."""
    module = model.parts.final_norm
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-5))
    w = model.weights.ln_final_w
    if model.cfg.normalization == "rms":
        scale = torch.rsqrt(final_resid.pow(2).mean(-1, keepdim=True) + eps)  # [n, 1]
        return lambda c: c * scale[(...,) + (None,) * (c.dim() - 2) + (slice(None),)] * w
    scale = torch.rsqrt(final_resid.var(-1, unbiased=False, keepdim=True) + eps)
    return lambda c: (
        (c - c.mean(-1, keepdim=True)) * scale[(...,) + (None,) * (c.dim() - 2) + (slice(None),)] * w
    )


def logit_diff_directions(model, task) -> Tensor:
    """W_U[:, answer] - W_U[:, wrong] per example: [n, d_model]."""
    w_u = model.weights.W_U
    return (w_u[:, task.answer] - w_u[:, task.wrong]).T


@torch.no_grad()
def direct_logit_attribution(model, task, which: str = "clean") -> dict[str, Tensor]:
    """Per-example DLA at the last position: {"heads": [n, layer, head], "mlp": [n, layer], "embed": [n],
    "biases": [n] (attention/MLP output biases, final norm bias and unembedding bias), "logit_diff": [n]}."""
    c = model.cfg
    sites = ["embed", "pos_embed"] if c.positional == "learned" else ["embed"]
    sites += [f"blocks.{i}.{s}" for i in range(c.n_layers) for s in ("attn.z", "mlp.out")]
    sites += [f"blocks.{c.n_layers - 1}.resid_post", "logits"]
    _, cache = model.run_with_cache(task.inputs(which), sites=sites)
    final = cache[f"blocks.{c.n_layers - 1}.resid_post"][:, -1]  # [n, d]
    norm = _final_norm_linear(model, final)
    direction = logit_diff_directions(model, task)  # [n, d]

    def dla(component: Tensor) -> Tensor:  # component [n, ..., d] -> [n, ...]
        d = direction[(slice(None),) + (None,) * (component.dim() - 2) + (slice(None),)]
        return (norm(component) * d).sum(-1)

    w = model.weights
    heads = torch.stack(
        [
            dla(torch.einsum("nhe,hed->nhd", cache[f"blocks.{i}.attn.z"][:, -1], w.W_O(i)))
            for i in range(c.n_layers)
        ],
        dim=1,
    )
    mlp = torch.stack([dla(cache[f"blocks.{i}.mlp.out"][:, -1]) for i in range(c.n_layers)], dim=1)
    embed = dla(cache["embed"][:, -1]) + (dla(cache["pos_embed"][:, -1]) if c.positional == "learned" else 0)
    biases = torch.zeros(len(task))
    for i in range(c.n_layers):
        if w.b_O(i) is not None:
            biases += dla(w.b_O(i).expand_as(final))
    if w.ln_final_b is not None:
        biases += (w.ln_final_b * direction).sum(-1)
    if w.b_U is not None:
        biases += w.b_U[task.answer] - w.b_U[task.wrong]
    logits = cache["logits"][:, -1]
    logit_diff = logits.gather(1, task.answer[:, None])[:, 0] - logits.gather(1, task.wrong[:, None])[:, 0]
    return {"heads": heads, "mlp": mlp, "embed": embed, "biases": biases, "logit_diff": logit_diff}


def head_dla(model, task, which: str = "clean") -> GridResult:
    """Mean DLA of every head: [layer, head], in logits (not normalised)."""
    heads = direct_logit_attribution(model, task, which)["heads"]  # [n, layer, head]
    return _grid(model, heads.mean(0), f"direct logit attribution per head ({which})")


@torch.no_grad()
def attention_to(
    model, task, query: str = "END", keys=("IO", "S1", "S2"), which: str = "clean"
) -> dict[str, GridResult]:
    """Mean attention probability from the `query` position to each named key position: {key: [layer, head]}."""
    missing = [p for p in (query, *keys) if p not in task.positions]
    if missing:
        raise ValueError(f"the task has no positions {missing}; it names {sorted(task.positions)}")
    sites = [f"blocks.{i}.attn.pattern" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(task.inputs(which), sites=sites)
    rows = torch.arange(len(task))
    q = task.positions[query]
    out = {}
    for key in keys:
        k = task.positions[key]
        values = torch.stack([cache[s][rows, :, q, k].mean(0) for s in sites])  # [layer, head]
        out[key] = _grid(model, values, f"attention {query} -> {key}")
    return out


def _grid(model, values: Tensor, title: str) -> GridResult:
    labels = {
        "layer": [str(i) for i in range(model.cfg.n_layers)],
        "head": [str(h) for h in range(model.cfg.n_heads)],
    }
    return GridResult(values=values, axes=["layer", "head"], labels=labels, title=title)
