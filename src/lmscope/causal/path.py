"""Path patching (Wang et al. 2022, appendix B): the effect of sender heads along specific paths only.

Senders are heads "blocks.L.attn.z[H]"; receivers are "logits" or heads' inputs "blocks.L.attn.q[H]"
(also .k / .v; for grouped-query models H is then a key/value head, shared by its query heads). Names
follow model.sites.parse_component (TransformerLens aliases such as blocks.7.attn.hook_z[3] and L7H3 work
too); results name them canonically.

To logits: run the clean prompts with the senders' outputs taken from the corrupt run and every other head
frozen at its clean output (MLPs recompute), and measure the metric.
To receivers: pass 1 is the same run, recording the receivers' q/k/v; pass 2 runs the clean prompts
again with only the receivers' q/k/v replaced by what pass 1 recorded.
Values use patch_sweep's scale: 1 = the clean metric (no effect), 0 = the corrupt metric.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..model.sites import Component, parse_component
from . import metrics as M
from .result import GridResult

SENDER_KINDS = ("attn.z",)
RECEIVER_KINDS = ("attn.q", "attn.k", "attn.v")


def _heads(model, specs, kinds, what: str) -> list[Component]:
    """Parse head names ('blocks.7.attn.z[3]', or any alias model.sites accepts) and check them."""
    return [parse_component(s, model.cfg, kinds=kinds, indexed=True, what=what) for s in specs]


def _frozen_run(model, task, sender_sets, orig_z, new_z, record: list[str]):
    """One batched forward: replica k runs the clean prompts with sender_sets[k] from the corrupt run and
    every other head frozen at its clean value. Returns (last logits [k*n, V], {site: [k*n, ...]})."""
    k = len(sender_sets)
    interventions = []
    for layer in range(model.cfg.n_layers):
        site = f"blocks.{layer}.attn.z"
        mask = torch.zeros(k, 1, 1, model.cfg.n_heads, 1, dtype=torch.bool)
        for r, senders in enumerate(sender_sets):
            for s_layer, s_head in senders:
                if s_layer == layer:
                    mask[r, 0, 0, s_head] = True
        # replica r, head h: the corrupt value if h is one of r's senders, else the clean one (frozen)
        interventions.append(
            (
                site,
                lambda act, _s, m=mask, s=site: torch.where(m, new_z[s][None], orig_z[s][None]).flatten(0, 1),
            )
        )
    inputs = _repeat(task.inputs("clean"), k)
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            inputs, sites=record, interventions=interventions, logits_to_keep=1
        )
    return logits[:, -1], cache


def _repeat(inputs: dict, k: int) -> dict:
    return {key: value.repeat(k, 1) for key, value in inputs.items()}


def _receiver_run(model, task, receivers, recorded, k: int) -> Tensor:
    """Pass 2: clean prompts with only the receivers' q/k/v (head-selected) taken from `recorded`."""
    from ..model.interventions import Patch

    patches = [Patch(r.site, source=recorded, heads=[r.index]) for r in receivers]
    with torch.no_grad():
        logits, _ = model.run_with_cache(
            _repeat(task.inputs("clean"), k), sites=[], interventions=patches, logits_to_keep=1
        )
    return logits[:, -1]


def path_patch(
    model,
    task,
    senders="all",
    receivers="logits",
    metric="logit_diff",
    chunk: int = 16,
    progress: bool = True,
) -> GridResult:
    """Path-patch `senders` (a list of heads as one set, or "all" to try every head on its own) into
    `receivers` ("logits" or a list of q/k/v heads). Returns a GridResult: [layer, head] for "all",
    else a single value (axes ["senders"])."""
    metric_fn = M.get_metric(metric)
    receiver_heads = None
    if receivers != "logits":
        receivers = [receivers] if isinstance(receivers, (str, Component)) else list(receivers)
        receiver_heads = _heads(model, receivers, RECEIVER_KINDS, "receiver (a head's q, k or v input)")
    if senders == "all":
        sender_sets = [
            [(layer, head)] for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
        ]
    else:
        specs = [senders] if isinstance(senders, (str, Component)) else list(senders)
        parsed = _heads(model, specs, SENDER_KINDS, "sender (a head's output)")
        sender_sets = [[(c.layer, c.index) for c in parsed]]
    if (
        senders != "all"
        and receiver_heads
        and min(layer for layer, _ in sender_sets[0]) >= max(r.layer for r in receiver_heads)
    ):
        raise ValueError("no path: every sender is at or after every receiver; senders need lower layers")
    z_sites = [f"blocks.{i}.attn.z" for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        clean_logits, orig_z = model.run_with_cache(task.inputs("clean"), sites=z_sites, logits_to_keep=1)
        corrupt_logits, new_z = model.run_with_cache(task.inputs("corrupt"), sites=z_sites, logits_to_keep=1)
    n = len(task)
    every = torch.arange(n)
    clean_m, corrupt_m = metric_fn(clean_logits[:, -1], task), metric_fn(corrupt_logits[:, -1], task)
    record = [] if receiver_heads is None else list(dict.fromkeys(r.site for r in receiver_heads))
    raw = torch.empty(len(sender_sets), n)
    for start in tqdm(
        range(0, len(sender_sets), chunk),
        desc="path patching",
        disable=not progress or len(sender_sets) <= chunk,
    ):
        group = sender_sets[start : start + chunk]
        last, recorded = _frozen_run(model, task, group, orig_z, new_z, record)
        if receiver_heads is not None:
            last = _receiver_run(model, task, receiver_heads, recorded, len(group))
        raw[start : start + len(group)] = metric_fn(last, task.subset(every.repeat(len(group)))).view(
            len(group), n
        )
    what = "logits" if receiver_heads is None else ", ".join(map(str, receiver_heads))
    if senders == "all":
        grid = raw.view(model.cfg.n_layers, model.cfg.n_heads, n)
        axes, labels = (
            ["layer", "head"],
            {
                "layer": [str(i) for i in range(model.cfg.n_layers)],
                "head": [str(h) for h in range(model.cfg.n_heads)],
            },
        )
    else:
        grid, axes, labels = raw, ["senders"], {"senders": [", ".join(map(str, parsed))]}
    return GridResult.from_per_example(
        grid,
        clean_m,
        corrupt_m,
        axes,
        labels,
        title=f"path patching: senders -> {what}",
        meta={"method": "path", "receivers": what, "task": task.name},
    )
