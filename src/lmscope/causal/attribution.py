"""Attribution patching (AtP): a first-order estimate of every node's denoising effect in two forwards
(clean, corrupt) and one backward.

For a node (a head, a neuron, a position of the residual stream) with activation a:
    effect(patch clean a into the corrupt run) ~= sum over the node's elements of (a_clean - a_corrupt) * dm/da,
the gradient taken in the corrupt run. It is exact when the metric is linear in the node and degrades
where attention saturates; compare it with an exact sweep (`compare`) to see where it fails.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.interventions import Hook
from ..model.sites import layout, split_site
from . import metrics as M
from .result import GridResult

# which axes of a site's canonical layout name a node, by `per`
_NODE_AXES = {"head": ("h",), "head_position": ("h", "p"), "neuron": ("d",), "position": ("p",), "layer": ()}


def default_per(site: str) -> str:
    axes = layout(site).split()
    if "h" in axes:
        return "head"
    return (
        "neuron"
        if split_site(site)[1].startswith("mlp.") and split_site(site)[1] != "mlp.out"
        else "position"
    )


def _node_values(x: Tensor, site: str, per: str) -> Tensor:
    """Sum x [n, *layout] over every axis that is not a node axis: -> [n, *node axes]."""
    axes = layout(site).split()
    keep = _NODE_AXES[per]
    if any(a not in axes and not (a == "p" and "q" in axes) for a in keep):
        raise ValueError(f"per={per!r} does not fit {site} [{layout(site)}]")
    keep = tuple("q" if (a == "p" and "q" in axes) else a for a in keep)
    reduce = [i for i, a in enumerate(axes) if i > 0 and a not in keep]
    out = x.sum(dim=reduce) if reduce else x
    kept = [a for a in axes[1:] if a in keep]
    order = [kept.index(a) + 1 for a in keep]  # node axes in the order `keep` names them
    return out.permute(0, *order)


def _run_with_grads(model, inputs, sites: list[str], task, metric):
    """Forward with every site made a graph node; return (metric per example, {site: activation, grad})."""
    acts: dict[str, Tensor] = {}

    def track(act: Tensor, site: str) -> Tensor:
        # A copy that stays in the graph and is what flows on, so d metric / d copy is the total derivative
        # (a detached leaf would cut the paths from earlier tracked sites through this one).
        tracked = act.clone()
        if not tracked.requires_grad:  # parameters frozen by the user: nothing upstream needs a graph
            tracked.requires_grad_(True)
        acts[site] = tracked
        return tracked

    with torch.enable_grad():
        logits, _ = model.run_with_cache(
            inputs, sites=[], interventions=[Hook(s, fn=track) for s in sites], logits_to_keep=1
        )
        values = metric(logits[:, -1], task)
        grads = torch.autograd.grad(values.sum(), [acts[s] for s in sites], allow_unused=True)
    grads = {s: torch.zeros_like(acts[s]) if g is None else g for s, g in zip(sites, grads)}
    return values.detach(), {s: acts[s].detach() for s in sites}, grads


def _qk_pattern_after_patch(model, task, site: str, clean: Tensor, resid_pre: Tensor) -> Tensor:
    """The corrupt run's attention pattern at the site's layer when one head of `site` (attn.q or attn.k)
    takes its clean value, for every head at once: -> [heads of site, n, n_heads, query, key].
    Exact: replica r patches head r; the forward starts at that layer and stops at its pattern."""
    layer, suffix = split_site(site)
    n_site_heads = clean.shape[2]
    n = clean.shape[0]
    inputs = {k: v.repeat(n_site_heads, 1) for k, v in task.inputs("corrupt").items()}
    head_mask = torch.eye(n_site_heads, dtype=torch.bool).repeat_interleave(n, 0)[
        :, None, :, None
    ]  # [r*n,1,H,1]
    clean_rep = clean.repeat(n_site_heads, 1, 1, 1)
    hook = Hook(site, fn=lambda act, _s: torch.where(head_mask, clean_rep, act))
    pattern_site = f"blocks.{layer}.attn.pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(
            inputs,
            sites=[pattern_site],
            interventions=[hook],
            start_from=(layer, resid_pre.repeat(n_site_heads, 1, 1)),
            stop_at=pattern_site,
        )
    pattern = cache[pattern_site]
    return pattern.view(n_site_heads, n, *pattern.shape[1:])


def _qk_fixed_estimate(model, task, site, clean, pattern, grad_pattern, resid_pre) -> Tensor:
    """AtP* (Kramár et al. 2024) for query/key heads: a query or key reaches the output only through the
    softmax, whose saturation breaks the linear estimate. So recompute the pattern exactly and linearise
    from there: sum over (query, key) of (pattern_patched - pattern) * dm/dpattern. -> [n, heads of site]."""
    new = _qk_pattern_after_patch(model, task, site, clean, resid_pre)  # [R, n, H, q, k]
    per_query_head = ((new - pattern[None]) * grad_pattern[None]).sum((-1, -2))  # [R, n, H]
    n_heads, n_site_heads = model.cfg.n_heads, new.shape[0]
    group = torch.arange(n_heads) // (n_heads // n_site_heads)  # the key/value head each query head reads
    owner = group if split_site(site)[1] == "attn.k" else torch.arange(n_heads)
    own = (owner[None, :] == torch.arange(n_site_heads)[:, None]).float()  # [R, H]: query heads touched by r
    return (per_query_head * own[:, None, :]).sum(-1).T  # [n, R]


def attribution_patch(
    model, task, sites, per: str | None = None, metric="logit_diff", qk_fix: bool = True
) -> dict[str, GridResult]:
    """AtP estimates of denoising every node of `sites` (names or globs), grouped by kind of site.

    Returns {suffix: GridResult}, e.g. {"attn.z": [layer, head], "mlp.post": [layer, neuron]}, on the
    same normalised scale as patch_sweep(mode="denoise") (0 = corrupt, 1 = clean). With qk_fix (default),
    attn.q / attn.k heads (per="head") get AtP*'s estimate through the recomputed attention pattern.
    """
    names = model.resolve_sites(sites)
    metric_fn = M.get_metric(metric)
    qk_sites = [
        s
        for s in names
        if qk_fix and split_site(s)[1] in ("attn.q", "attn.k") and (per or default_per(s)) == "head"
    ]
    qk_layers = sorted({split_site(s)[0] for s in qk_sites})
    patterns = [f"blocks.{layer}.attn.pattern" for layer in qk_layers]
    resids = [f"blocks.{layer}.resid_pre" for layer in qk_layers]
    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(task.inputs("clean"), sites=names, logits_to_keep=1)
        _, corrupt_resid = model.run_with_cache(task.inputs("corrupt"), sites=resids, logits_to_keep=1)
    tracked = list(dict.fromkeys(names + patterns))
    corrupt_m, corrupt_acts, grads = _run_with_grads(model, task.inputs("corrupt"), tracked, task, metric_fn)
    qk_estimates = {}
    for s in qk_sites:
        layer = split_site(s)[0]
        p = f"blocks.{layer}.attn.pattern"
        qk_estimates[s] = _qk_fixed_estimate(
            model, task, s, clean[s], corrupt_acts[p], grads[p], corrupt_resid[f"blocks.{layer}.resid_pre"]
        )
    clean_m = metric_fn(clean_logits[:, -1], task).detach()
    by_kind: dict[str, list[str]] = {}
    for name in names:
        by_kind.setdefault(split_site(name)[1], []).append(name)
    results = {}
    for suffix, group in by_kind.items():
        kind_per = per or default_per(group[0])
        # [layer, n, *node axes] -> [layer, *node axes, n]
        est = torch.stack(
            [
                qk_estimates[s]
                if s in qk_estimates
                else _node_values((clean[s] - corrupt_acts[s]) * grads[s], s, kind_per)
                for s in group
            ]
        )
        est = est.movedim(1, -1)
        axes = [
            "layer",
            *{
                "head": ["head"],
                "head_position": ["head", "position"],
                "neuron": ["neuron"],
                "position": ["position"],
                "layer": [],
            }[kind_per],
        ]
        labels = {"layer": [str(split_site(s)[0]) for s in group]}
        for axis, size in zip(axes[1:], est.shape[1:-1]):
            labels[axis] = [str(i) for i in range(size)]
        results[suffix] = GridResult.from_per_example(
            corrupt_m + est,
            clean_m,
            corrupt_m,
            axes,
            labels,
            title=f"attribution patching: {suffix} per {kind_per}",
            meta={
                "method": "attribution",
                "site": suffix,
                "per": kind_per,
                "task": task.name,
                "qk_fix": any(s in qk_estimates for s in group),
            },
        )
    return results


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..n of x [n]; tied values share the mean of their ranks (scipy.stats.rankdata's default)."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    last = counts.cumsum(0)  # the rank of each distinct value's last copy
    return (last - (counts - 1) / 2).double()[inverse]


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman correlation of two equally shaped tensors (NaNs dropped, ties at their average rank, as
    scipy.stats.spearmanr); NaN when either side is constant (it has no ranking)."""
    a, b = a.flatten().double(), b.flatten().double()
    keep = ~(a.isnan() | b.isnan())
    ra, rb = average_ranks(a[keep]), average_ranks(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = ra.norm() * rb.norm()
    return float((ra * rb).sum() / scale) if scale > 0 else float("nan")


def compare(estimate: GridResult, exact: GridResult) -> dict:
    """Agreement of an attribution estimate with an exact sweep over the same nodes."""
    if estimate.values.shape != exact.values.shape:
        raise ValueError(f"shapes differ: estimate {tuple(estimate.shape)}, exact {tuple(exact.shape)}")
    diff = (estimate.values - exact.values).abs()
    worst = diff.nan_to_num(-1).flatten().argmax().item()
    idx = torch.unravel_index(torch.tensor(worst), exact.values.shape)
    return {
        "spearman": rank_correlation(estimate.values, exact.values),
        "pearson": float(
            torch.corrcoef(torch.stack([estimate.values.flatten(), exact.values.flatten()]))[0, 1]
        ),
        "max_abs_error": float(diff.nan_to_num(0).max()),
        "worst": {a: exact.labels[a][int(i)] for a, i in zip(exact.axes, idx)},
    }
