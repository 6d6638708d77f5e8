"""Activation patching sweeps: patch one site index at a time and measure the metric.

Two ways to compute the same numbers:
- method="naive": one patched forward per index, over the whole batch (what TransformerLens's `patching`
  module does); kept as the reference the tests and the benchmark compare against.
- method="fast": many indices at once. Each index gets its own copy of the base batch inside one large
  forward (replica k carries patch k). Patches are grouped by layer, and a forward starts at its earliest
  patched layer from the base run's cached residual instead of recomputing the layers before it. Positions
  before the first one its patches change are not recomputed either: the base run's keys/values stand in
  for them. A patch that changes nothing (the source equals the base activation wherever it selects) is
  the base run itself and needs no forward. Exact: the same computation per replica.

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
from transformers import DynamicCache

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


@dataclass
class _BaseRun:
    """The run every patch goes into, recorded once."""

    inputs: dict
    acts: dict[str, Tensor]  # the swept sites [n, ...] and every blocks.{i}.resid_pre [n, pos, d_model]
    kv: DynamicCache  # every layer's keys/values [n, kv_heads, pos, d_head]
    last: Tensor  # logits at the prediction position [n, d_vocab]


def _sources(model, task, sites: list[str], mode: str, seed: int):
    """-> (base run, source activations {site: [n, ...]}, clean and corrupt last-position logits [n, V])."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
    resid = [f"blocks.{i}.resid_pre" for i in range(model.cfg.n_layers)]
    base_name = "corrupt" if mode == "denoise" else "clean"
    kv = DynamicCache()
    runs = {}
    with torch.no_grad():
        for name in ("clean", "corrupt"):
            runs[name] = model.run_with_cache(
                task.inputs(name),
                sites=sites + resid,
                logits_to_keep=1,
                kv_cache=kv if name == base_name else None,
            )
    (clean_logits, clean), (corrupt_logits, corrupt) = runs["clean"], runs["corrupt"]
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
    base_logits, base_cache = runs[base_name]
    base = _BaseRun(task.inputs(base_name), dict(base_cache.items()), kv, base_logits[:, -1])
    return base, source, clean_logits[:, -1], corrupt_logits[:, -1]


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


def _first_changes(plan: SweepPlan, source, base_acts, n_pos: int) -> list[int]:
    """Per patch, the first position where it changes the base run; n_pos where it changes nothing.

    Nothing before a patch's site changes, so the patch changes exactly the selected elements where the
    source differs from the base activation, and by causality no position before the first of them.
    Sites without a position axis (attn.pattern) count as changing from position 0.
    """
    differs = {s: (source[s] != base_acts[s]).any(0, keepdim=True) for s in source}  # [1, ...]
    firsts = []
    for idx in plan.indices:
        diff = differs[idx.site]
        sel = selection_mask(diff.shape, idx.site, idx.heads, idx.positions, idx.neurons, diff.device)
        changed = diff if sel is None else diff & sel
        if "p" in layout(idx.site).split():  # canonical layouts put the position axis second
            at = changed.transpose(0, 1).flatten(1).any(1).nonzero()
            firsts.append(int(at[0]) if len(at) else n_pos)
        else:
            firsts.append(0 if changed.any() else n_pos)
    return firsts


# Measured on CPU (SmolLM2-135M, 2 threads): a forward costs about 45 tokens' worth on top of its tokens,
# so from ~250 tokens on it runs within ~15% of the per-token speed of much larger ones. Larger chunks
# would start more replicas at layers before their own. (A GPU needs far larger forwards to be busy.)
EFFICIENT_TOKENS_CPU = 256


def _chunks(order: list[int], firsts: list[int], n: int, n_pos: int, target: int, max_tokens: int):
    """Split patches (ordered by layer, then first changed position) into forwards of about `target`
    tokens, never more than max_tokens. A forward runs all its replicas from its earliest layer and
    position, so smaller chunks recompute less; larger ones run faster per token. -> [[patch index]]"""
    target = min(target, max_tokens)
    chunks, chunk, p0 = [], [], n_pos
    for j in order:
        if chunk and (len(chunk) + 1) * n * (n_pos - min(p0, firsts[j])) > max_tokens:
            chunks.append(chunk)
            chunk, p0 = [], n_pos
        chunk.append(j)
        p0 = min(p0, firsts[j])
        if len(chunk) * n * (n_pos - p0) >= target:
            chunks.append(chunk)
            chunk, p0 = [], n_pos
    return chunks + [chunk] if chunk else chunks


def _replica_patch(group: list[PatchIndex], site: str, src: Tensor, p0: int):
    """One hook for all replicas of a chunk patched at `site`: replica k takes src where its selection says.
    With p0 > 0 the run covers positions p0.. only, so masks and source are cut to those."""
    n = src.shape[0]
    masks = torch.zeros(len(group), *src.shape, dtype=torch.bool, device=src.device)
    for k, idx in enumerate(group):
        if idx.site == site:
            sel = selection_mask(src.shape, site, idx.heads, idx.positions, idx.neurons, src.device)
            masks[k] = True if sel is None else sel
    masks, src = masks[:, :, p0:], src[:, p0:]  # [k, n, pos - p0, ...]
    masks = masks.reshape(len(group) * n, *src.shape[1:])
    src_rep = src.repeat(len(group), *([1] * (src.dim() - 1)))
    return site, lambda act, _site: torch.where(masks, src_rep, act)


def _prefix_kv(kv: DynamicCache, p0: int, k: int) -> DynamicCache:
    """The base run's keys/values for positions < p0, once per replica (replica-major, like the inputs)."""
    return DynamicCache(
        [
            (layer.keys[:, :, :p0].repeat(k, 1, 1, 1), layer.values[:, :, :p0].repeat(k, 1, 1, 1))
            for layer in kv.layers
        ]
    )


def _run_chunk(model, group: list[PatchIndex], p0: int, base: _BaseRun, source) -> Tensor:
    """Replica k of the base batch carries patch group[k]; -> last-position logits [k * n, V].

    The replicas start at the earliest patched layer from the base run's resid_pre (the blocks before
    it would compute the same), and at position p0 with the base run's keys/values for the positions
    before it, which no patch of the chunk changes.
    """
    k = len(group)
    inputs = {name: t.repeat(k, 1) for name, t in base.inputs.items()}  # all positions: the cache covers < p0
    layers = [idx.layer for idx in group]
    start_from = None
    if None not in layers:  # all per-layer sites: skip the blocks before the earliest one
        first = min(layers)
        start_from = (first, base.acts[f"blocks.{first}.resid_pre"][:, p0:].repeat(k, 1, 1))
    hooks = [
        _replica_patch(group, site, source[site], p0) for site in dict.fromkeys(idx.site for idx in group)
    ]
    with torch.no_grad():
        logits, _ = model.run_with_cache(
            inputs,
            sites=[],
            interventions=hooks,
            start_from=start_from,
            logits_to_keep=1,
            kv_cache=_prefix_kv(base.kv, p0, k) if p0 else None,
        )
    return logits[:, -1]


def _fast(model, plan, base: _BaseRun, source, metric_fn, n, chunk_tokens, progress) -> Tensor:
    n_pos = base.inputs["input_ids"].shape[1]
    firsts = _first_changes(plan, source, base.acts, n_pos)
    out = torch.empty(len(plan.indices), n)
    noop = [j for j, first in enumerate(firsts) if first == n_pos]
    out[noop] = metric_fn(base.last, torch.arange(n))  # a patch that changes nothing gives the base run
    todo = [j for j, first in enumerate(firsts) if first < n_pos]
    todo.sort(key=lambda j: (plan.indices[j].layer or 0, firsts[j]))
    target = EFFICIENT_TOKENS_CPU if model.device.type == "cpu" else chunk_tokens
    chunks = _chunks(todo, firsts, n, n_pos, target, chunk_tokens)
    for chunk in tqdm(chunks, desc="patching (fast)", disable=not progress or len(chunks) < 2):
        group = [plan.indices[j] for j in chunk]
        logits = _run_chunk(model, group, min(firsts[j] for j in chunk), base, source)
        out[chunk] = metric_fn(logits, torch.arange(n).repeat(len(chunk))).view(len(chunk), n)
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
    chunk_tokens: the most tokens (replicas x examples x positions run) in one forward of method="fast".
    """
    if method not in ("fast", "naive"):
        raise ValueError(f"method={method!r}: 'fast' or 'naive'")
    n, n_pos = task.clean.shape
    pos_labels = None
    if task.clean_prompts and task.attention_mask is None:
        pos_labels = [f"{p}:{t}" for p, t in enumerate(model.to_str_tokens(task.clean[0]))]
    plan = plan_sweep(model, site, per, n_pos, neurons, pos_labels)
    sites = list(dict.fromkeys(idx.site for idx in plan.indices))
    base, source, clean_last, corrupt_last = _sources(model, task, sites, mode, seed)
    metric_fn = _metric_fn(metric, task, clean_last)
    every = torch.arange(n)
    clean_m, corrupt_m = metric_fn(clean_last, every), metric_fn(corrupt_last, every)
    if method == "naive":
        raw = _naive(model, plan, base.inputs, source, metric_fn, n, progress)
    else:
        raw = _fast(model, plan, base, source, metric_fn, n, chunk_tokens, progress)
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
