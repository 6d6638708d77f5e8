"""Activation patching sweeps: patch one site index at a time and measure the metric.

Two ways to compute the same numbers:
- method="naive": one patched forward per index, over the whole batch (what TransformerLens's `patching`
  module does); kept as the reference the tests and the benchmark compare against.
- method="fast": many indices at once. Each index gets its own copy of the base batch inside one large
  forward (replica k carries patch k), and the forward starts at the earliest patched layer from the base
  run's cached residual instead of recomputing the layers before it. Exact: the same computation per replica.

Modes (what is patched into what):
    denoise   clean activations into the corrupt run       noise   corrupt activations into the clean run
    zero / mean / resample   ablate in the clean run (mean over examples; examples shuffled with `seed`)
Values are normalised: 0 = the corrupt run's metric, 1 = the clean run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..model.interventions import Patch, selection_mask
from ..model.sites import layout, split_site
from . import metrics as M
from .result import GridResult

MODES = ("denoise", "noise", "zero", "mean", "resample")
PER = ("layer", "position", "head", "head_position", "neuron")


@dataclass
class PatchIndex:
    """One patch of a sweep: a site and a selection, and where its value goes in the result grid."""

    site: str
    key: tuple[int, ...]
    heads: list[int] | None = None
    positions: list[int] | None = None
    neurons: list[int] | None = None

    @property
    def layer(self) -> int | None:
        return split_site(self.site)[0]


@dataclass
class SweepPlan:
    indices: list[PatchIndex]
    axes: list[str]
    labels: dict[str, list[str]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.labels[a]) for a in self.axes)


def plan_sweep(model, site: str, per: str, n_pos: int, neurons=None, pos_labels=None) -> SweepPlan:
    """Enumerate the patches of a sweep over `site` (a name or glob of one kind of site) by `per`."""
    if per not in PER:
        raise ValueError(f"per={per!r}: choose one of {', '.join(PER)}")
    sites = model.resolve_sites(site)
    suffixes = {split_site(s)[1] for s in sites}
    if len(suffixes) > 1:
        raise ValueError(
            f"{site!r} matches several kinds of site ({', '.join(sorted(suffixes))}); sweep one at a time"
        )
    axes_of_site = layout(sites[0]).split()
    if per in ("head", "head_position") and "h" not in axes_of_site:
        raise ValueError(f"per={per!r} needs a site with heads (attn.q/k/v/z/pattern), not {sites[0]}")
    if per == "neuron" and axes_of_site[-1] != "d":
        raise ValueError(f"per='neuron' needs a site with a feature axis, not {sites[0]}")
    suffix = suffixes.pop()
    n_heads = model.cfg.n_kv_heads if suffix in ("attn.k", "attn.v") else model.cfg.n_heads
    width = {"mlp.pre": model.cfg.d_mlp, "mlp.pre_linear": model.cfg.d_mlp, "mlp.post": model.cfg.d_mlp}.get(
        suffix, model.cfg.d_head if "h" in axes_of_site else model.cfg.d_model
    )
    neuron_ids = list(range(width)) if neurons is None else [int(i) for i in neurons]
    layer_labels = [str(split_site(s)[0]) if split_site(s)[0] is not None else s for s in sites]
    labels = {
        "layer": layer_labels,
        "position": pos_labels or [str(p) for p in range(n_pos)],
        "head": [str(h) for h in range(n_heads)],
        "neuron": [str(i) for i in neuron_ids],
    }
    axes = {
        "layer": ["layer"],
        "position": ["layer", "position"],
        "head": ["layer", "head"],
        "head_position": ["layer", "head", "position"],
        "neuron": ["layer", "neuron"],
    }[per]
    indices = []
    for li, s in enumerate(sites):
        if per == "layer":
            indices.append(PatchIndex(s, (li,)))
        elif per == "position":
            indices += [PatchIndex(s, (li, p), positions=[p]) for p in range(n_pos)]
        elif per == "head":
            indices += [PatchIndex(s, (li, h), heads=[h]) for h in range(n_heads)]
        elif per == "head_position":
            indices += [
                PatchIndex(s, (li, h, p), heads=[h], positions=[p])
                for h in range(n_heads)
                for p in range(n_pos)
            ]
        else:
            indices += [PatchIndex(s, (li, j), neurons=[n]) for j, n in enumerate(neuron_ids)]
    return SweepPlan(indices, axes, {a: labels[a] for a in axes})


def _sources(model, task, sites: list[str], mode: str, seed: int):
    """-> (base inputs, source activations {site: [n, ...]}, base resid_pre {layer: [n, pos, d]}, baselines)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
    resid = [f"blocks.{i}.resid_pre" for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(
            task.inputs("clean"), sites=sites + resid, logits_to_keep=1
        )
        corrupt_logits, corrupt = model.run_with_cache(
            task.inputs("corrupt"), sites=sites + resid, logits_to_keep=1
        )
    base_name = "corrupt" if mode == "denoise" else "clean"
    base_cache = corrupt if mode == "denoise" else clean
    if mode == "denoise":
        source = {s: clean[s] for s in sites}
    elif mode == "noise":
        source = {s: corrupt[s] for s in sites}
    elif mode == "zero":
        source = {s: torch.zeros_like(clean[s]) for s in sites}
    elif mode == "mean":
        source = {s: clean[s].mean(0, keepdim=True).expand_as(clean[s]) for s in sites}
    else:
        order = torch.randperm(len(task), generator=torch.Generator().manual_seed(seed))
        source = {s: clean[s][order] for s in sites}
    base_resid = {i: base_cache[f"blocks.{i}.resid_pre"] for i in range(model.cfg.n_layers)}
    return task.inputs(base_name), source, base_resid, clean_logits[:, -1], corrupt_logits[:, -1]


def _metric_fn(metric, task, clean_last: Tensor):
    """-> f(last-position logits [m, V], example index [m]) -> [m]."""
    if metric == "kl":
        return lambda logits, ex: M.kl_divergence(logits, clean_last[ex])
    fn = M.get_metric(metric)
    return lambda logits, ex: fn(logits, task.subset(ex))


def _naive(model, plan, base_inputs, source, metric_fn, n, progress) -> Tensor:
    out = torch.empty(len(plan.indices), n)
    every = torch.arange(n)
    for j, idx in enumerate(tqdm(plan.indices, desc="patching (naive)", disable=not progress)):
        patch = Patch(idx.site, source=source, heads=idx.heads, positions=idx.positions, neurons=idx.neurons)
        with torch.no_grad():
            logits, _ = model.run_with_cache(base_inputs, sites=[], interventions=[patch], logits_to_keep=1)
        out[j] = metric_fn(logits[:, -1], every)
    return out


def _replica_patch(group: list[PatchIndex], site: str, src: Tensor):
    """One hook for all replicas of a chunk patched at `site`: replica k takes src where its selection says."""
    n = src.shape[0]
    masks = torch.zeros(len(group), *src.shape, dtype=torch.bool, device=src.device)
    for k, idx in enumerate(group):
        if idx.site == site:
            sel = selection_mask(src.shape, site, idx.heads, idx.positions, idx.neurons, src.device)
            masks[k] = True if sel is None else sel
    masks = masks.view(len(group) * n, *src.shape[1:])
    src_rep = src.repeat(len(group), *([1] * (src.dim() - 1)))
    return site, lambda act, _site: torch.where(masks, src_rep, act)


def _fast(model, plan, base_inputs, source, base_resid, metric_fn, n, chunk_tokens, progress) -> Tensor:
    ids = base_inputs["input_ids"]
    mask = base_inputs.get("attention_mask")
    per_chunk = max(1, chunk_tokens // ids.numel())
    out = torch.empty(len(plan.indices), n)
    starts = range(0, len(plan.indices), per_chunk)
    for start in tqdm(starts, desc="patching (fast)", disable=not progress or len(starts) < 2):
        group = plan.indices[start : start + per_chunk]
        k = len(group)
        inputs = {"input_ids": ids.repeat(k, 1)}
        if mask is not None:
            inputs["attention_mask"] = mask.repeat(k, 1)
        layers = [idx.layer for idx in group]
        start_from = None
        if None not in layers:  # all per-layer sites: skip the blocks before the earliest one
            first = min(layers)
            start_from = (first, base_resid[first].repeat(k, 1, 1))
        hooks = [
            _replica_patch(group, site, source[site]) for site in dict.fromkeys(idx.site for idx in group)
        ]
        with torch.no_grad():
            logits, _ = model.run_with_cache(
                inputs, sites=[], interventions=hooks, start_from=start_from, logits_to_keep=1
            )
        out[start : start + k] = metric_fn(logits[:, -1], torch.arange(n).repeat(k)).view(k, n)
    return out


def patch_sweep(
    model,
    task,
    site: str,
    per: str = "position",
    mode: str = "denoise",
    metric="logit_diff",
    method: str = "fast",
    neurons=None,
    chunk_tokens: int = 8192,
    seed: int = 0,
    progress: bool = True,
) -> GridResult:
    """Patch every index of `site` (e.g. "blocks.*.attn.z") one at a time; return normalised effects.

    per: "layer" (whole site), "position", "head" (all positions), "head_position", "neuron".
    metric: "logit_diff" (default), "prob", "kl" (to the clean run), or f(logits, task) -> [n].
    """
    if method not in ("fast", "naive"):
        raise ValueError(f"method={method!r}: 'fast' or 'naive'")
    n, n_pos = task.clean.shape
    pos_labels = None
    if task.clean_prompts and task.attention_mask is None:
        pos_labels = [f"{p}:{t}" for p, t in enumerate(model.to_str_tokens(task.clean[0]))]
    plan = plan_sweep(model, site, per, n_pos, neurons, pos_labels)
    sites = list(dict.fromkeys(idx.site for idx in plan.indices))
    base_inputs, source, base_resid, clean_last, corrupt_last = _sources(model, task, sites, mode, seed)
    metric_fn = _metric_fn(metric, task, clean_last)
    every = torch.arange(n)
    clean_m, corrupt_m = metric_fn(clean_last, every), metric_fn(corrupt_last, every)
    if method == "naive":
        raw = _naive(model, plan, base_inputs, source, metric_fn, n, progress)
    else:
        raw = _fast(model, plan, base_inputs, source, base_resid, metric_fn, n, chunk_tokens, progress)
    grid = torch.full((*plan.shape, n), float("nan"))
    for j, idx in enumerate(plan.indices):
        grid[idx.key] = raw[j]
    return GridResult.from_per_example(
        grid,
        clean_m,
        corrupt_m,
        plan.axes,
        plan.labels,
        title=f"{mode} {site} per {per} ({metric if isinstance(metric, str) else 'custom metric'})",
        meta={"site": site, "per": per, "mode": mode, "method": method, "n_examples": n, "task": task.name},
    )
