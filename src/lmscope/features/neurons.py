"""Neuron analysis: what makes a neuron fire, what it writes, and what breaks without it.

    acts = unit_activations(model, dataset, [(12, 345), (3, 7)])        # [n_ctx, ctx_len, n_units]
    cards = unit_cards(model, dataset, [(12, 345), (3, 7)], acts)       # unit cards (see the docs)
    project_to_vocab(model, direction, k=10)                            # tokens a direction promotes
    ablation_effects(model, dataset, {"fr": [(12, 345)]})               # loss change per label, zeroed
    rank_by_ablation(model, train_docs, best_neurons(...), ["french"])  # probe's top 8, most selective first
    superposition_fingerprint(model, dataset)                           # per-layer weight/bias statistics

A unit is (layer, neuron) at blocks.{layer}.mlp.post (the input of W_out). Vocabulary projections read a
neuron's output weights through the final norm's weight and the unembedding: for RMSNorm the norm also
divides by the residual's scale, which depends on the input, so only its weight is applied (the ranking
of tokens is unaffected by that scale); for LayerNorm the direction is also centred, as the norm does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..model import Ablate
from .collect import iter_batches

Unit = tuple[int, int]
SITE_KIND = "mlp.post"


def _decoder(model):
    """token id -> its text, memoised (decoding one token at a time is the slow part of a card)."""
    tok, seen = model.tokenizer, {}

    def decode(i: int) -> str:
        if i not in seen:
            seen[i] = tok.decode([i]) if tok is not None else str(i)
        return seen[i]

    return decode


# ---- vocabulary projection -----------------------------------------------------------------------------
def project_to_vocab(model, direction: Tensor, k: int = 10) -> dict | list[dict]:
    """Tokens whose logits a residual direction raises and lowers most.

    direction [d_model] (or [n, d_model] for several). The direction goes through the final norm's
    weight (centred first for LayerNorm) and W_U: effect = (norm_w * direction) @ W_U [d_vocab].
    Returns {"promoted": [[token, effect], ...k], "suppressed": [[token, effect], ...k]} (a list for [n, d]).
    """
    direction = torch.as_tensor(direction).detach()
    single = direction.dim() == 1
    d_model = model.cfg.d_model
    if direction.shape[-1] != d_model or direction.dim() > 2:
        raise ValueError(
            f"direction must be [d_model={d_model}] or [n, d_model], got {tuple(direction.shape)}"
        )
    w = model.weights
    direction = direction.reshape(-1, d_model).to(w.W_U.dtype)
    if model.cfg.normalization == "layer":
        direction = direction - direction.mean(-1, keepdim=True)
    with torch.no_grad():
        effects = (direction * w.ln_final_w.detach()) @ w.W_U.detach()  # [n, d_vocab]
    decode = _decoder(model)
    k = min(k, effects.shape[-1])
    out = []
    for row in effects.float():
        top, bottom = row.topk(k), (-row).topk(k)
        out.append(
            {
                "promoted": [[decode(i), float(v)] for v, i in zip(top.values, top.indices.tolist())],
                "suppressed": [
                    [decode(i), -float(v)] for v, i in zip(bottom.values, bottom.indices.tolist())
                ],
            }
        )
    return out[0] if single else out


def vocab_projection(model, layer: int, neurons: Sequence[int], k: int = 10) -> list[dict]:
    """project_to_vocab of each neuron's output weights W_out(layer)[neuron] [d_model], one dict per neuron."""
    neurons = list(neurons)
    if not neurons:
        raise ValueError("give at least one neuron index")
    bad = [n for n in neurons if not 0 <= n < model.cfg.d_mlp]
    if bad:
        raise IndexError(f"neurons {bad} out of range: layer {layer} has d_mlp = {model.cfg.d_mlp} neurons")
    return project_to_vocab(model, model.weights.W_out(layer)[neurons].detach(), k)


# ---- activations and unit cards -------------------------------------------------------------------------
def _sites_and_columns(units: Sequence[Unit]) -> tuple[list[str], list[tuple[str, int]]]:
    units = [(int(layer), int(neuron)) for layer, neuron in units]
    if not units:
        raise ValueError("give at least one unit (layer, neuron)")
    sites = [f"blocks.{layer}.{SITE_KIND}" for layer in sorted({layer for layer, _ in units})]
    return sites, [(f"blocks.{layer}.{SITE_KIND}", neuron) for layer, neuron in units]


def unit_activations(
    model, dataset, units: Sequence[Unit], batch_size: int = 8, progress: bool = False
) -> Tensor:
    """Activations of each unit (layer, neuron) at every token: [n_ctx, ctx_len, n_units] (float32)."""
    sites, columns = _sites_and_columns(units)
    parts = []
    for _, acts in iter_batches(model, dataset, sites, batch_size, progress, "unit activations"):
        parts.append(torch.stack([acts[site][..., neuron] for site, neuron in columns], -1))
    return torch.cat(parts)


def _example(dataset, acts: Tensor, row: int, pos: int, decode, context: tuple[int, int]) -> dict:
    """{"tokens", "acts", "peak", "label"} for a window of `context` (before, after) tokens around pos,
    within the same context row and the same document (BOS and padding are left out)."""
    before, after = context
    doc = int(dataset.doc_ids[row, pos])
    lo, hi = max(0, pos - before), min(dataset.ctx_len, pos + after + 1)
    keep = [j for j in range(lo, hi) if int(dataset.doc_ids[row, j]) == doc and doc >= 0] or [pos]
    label = int(dataset.labels[row, pos])
    return {
        "tokens": [decode(int(dataset.tokens[row, j])) for j in keep],
        "acts": [float(f"{float(acts[row, j]):.5g}") for j in keep],  # 5 significant digits: small JSON
        "peak": keep.index(pos),
        "label": dataset.label_names[label] if label >= 0 else "",
    }


def unit_cards(
    model,
    dataset,
    units: Sequence[Unit],
    acts: Tensor | None = None,
    n_top: int = 10,
    context: tuple[int, int] = (24, 4),
    n_quantiles: int = 4,
    per_quantile: int = 3,
    vocab_k: int = 10,
    seed: int = 0,
) -> list[dict]:
    """A unit card per (layer, neuron): statistics, top examples (one per context row), examples from
    equal-width activation ranges, the vocabulary projection of its output weights.

    acts: unit_activations(model, dataset, units) if already computed. density: the share of document
    tokens where the activation exceeds 10% of its maximum (SiLU/GELU neurons are rarely exactly 0).
    """
    units = [(int(layer), int(neuron)) for layer, neuron in units]
    if acts is None:
        acts = unit_activations(model, dataset, units)
    real = dataset.doc_ids >= 0  # BOS and padding are no document's tokens
    decode = _decoder(model)
    gen = torch.Generator().manual_seed(seed)
    cards = []
    for u, (layer, neuron) in enumerate(units):
        a = acts[..., u]  # [n_ctx, ctx_len]
        values = a[real]
        max_act = float(values.max())
        counts, edges = torch.histogram(values.float(), bins=30)
        top = _extreme_examples(dataset, a, real, n_top, decode, context, lowest=False)
        quantiles = []
        if max_act > 0:
            bounds = torch.linspace(0, max_act, n_quantiles + 1).tolist()
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                hits = (real & (a > lo) & (a <= hi)).nonzero()
                picked = hits[torch.randperm(hits.shape[0], generator=gen)[:per_quantile]]
                examples = [_example(dataset, a, int(r), int(p), decode, context) for r, p in picked]
                quantiles.append({"range": [lo, hi], "examples": examples})
        projection = vocab_projection(model, layer, [neuron], vocab_k)[0]
        cards.append(
            {
                "id": f"{layer}.{neuron}",
                "kind": "neuron",
                "site": f"blocks.{layer}.{SITE_KIND}",
                "index": neuron,
                "title": f"L{layer} N{neuron}",
                "density": float((values > 0.1 * max_act).float().mean()) if max_act > 0 else 0.0,
                "max_act": max_act,
                "mean_act": float(values.mean()),
                "histogram": {"edges": edges.tolist(), "counts": counts.long().tolist()},
                "top_examples": top,
                "quantile_examples": quantiles,
                **projection,
                # SiLU/GELU neurons also go negative: what drives them lowest can matter as much.
                "extra": {
                    "bottom_examples": _extreme_examples(dataset, a, real, n_top, decode, context, True)
                },
            }
        )
    return cards


def _extreme_examples(dataset, a: Tensor, real: Tensor, n: int, decode, context, lowest: bool) -> list[dict]:
    """Examples at the highest (or lowest) activation of each context row, the n most extreme rows."""
    sign = -1.0 if lowest else 1.0
    row_peak, row_pos = (sign * a).masked_fill(~real, float("-inf")).max(1)
    rows = row_peak.argsort(descending=True)[:n]
    return [
        _example(dataset, a, int(r), int(row_pos[r]), decode, context)
        for r in rows
        if row_peak[r] > -float("inf")
    ]


# ---- ablation -------------------------------------------------------------------------------------------
def _next_token_losses(logits: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy [n] at every position of the batch whose next token is in the same
    document, and the label index [n] of that next token. logits [b, ctx, d_vocab]."""
    doc = batch["doc_ids"]
    valid = (doc[:, :-1] >= 0) & (doc[:, :-1] == doc[:, 1:])  # [b, ctx-1]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), batch["tokens"][:, 1:].flatten(), reduction="none"
    ).view_as(valid)
    return ce[valid], batch["labels"][:, 1:][valid]


def _zeroing(units: Sequence[Unit]) -> list[Ablate]:
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in units:
        by_layer.setdefault(int(layer), []).append(int(neuron))
    return [Ablate(f"blocks.{layer}.{SITE_KIND}", how="zero", neurons=n) for layer, n in by_layer.items()]


def ablation_effects(
    model,
    dataset,
    ablations: Mapping[str, Sequence[Unit]],
    batch_size: int = 8,
    progress: bool = False,
    on_result: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """Zero each set of units at every position and measure the next-token loss per label.

    ablations: name -> [(layer, neuron), ...]. Returns name -> {"units", "loss_delta": {label: ablated -
    clean}, "clean": {label: mean loss}, "ablated": {label: mean loss}, "n_tokens": {label: count}}, the
    loss counted at positions whose next token is in the same document and labelled by that token.
    on_result(name, effect) is called as each set finishes (e.g. to save progress).
    """
    from tqdm.auto import tqdm

    if not ablations:
        raise ValueError("give at least one named set of units to ablate")
    zeroings = {name: _zeroing(units) for name, units in ablations.items()}
    # A set's earliest layer: the blocks before it compute what the clean run did, so each ablated run
    # starts there from the clean run's resid_pre (model.run_with_cache's start_from): the same numbers,
    # without recomputing the layers below.
    starts = {name: min(int(layer) for layer, _ in units) for name, units in ablations.items()}
    resid_sites = [f"blocks.{layer}.resid_pre" for layer in sorted(set(starts.values()))]
    batches = list(dataset.batches(batch_size))
    clean, labels, resid = [], [], []
    with torch.no_grad():
        for batch in batches:
            logits, cache = model.run_with_cache(
                batch["tokens"], sites=resid_sites, attention_mask=batch["attention_mask"]
            )
            ce, lab = _next_token_losses(logits, batch)
            clean.append(ce)
            labels.append(lab)
            resid.append({site: cache[site] for site in resid_sites})
    clean, labels = torch.cat(clean), torch.cat(labels)
    names = list(dataset.label_names)
    present = [i for i in range(len(names)) if bool((labels == i).any())]
    clean_by = {names[i]: float(clean[labels == i].mean()) for i in present}
    out = {}
    for name, units in tqdm(ablations.items(), desc="ablations", disable=not progress):
        start = starts[name]
        ablated = []
        with torch.no_grad():
            for batch, cached in zip(batches, resid):
                logits, _ = model.run_with_cache(
                    batch["tokens"],
                    sites=[],
                    attention_mask=batch["attention_mask"],
                    interventions=zeroings[name],
                    start_from=(start, cached[f"blocks.{start}.resid_pre"]),
                )
                ablated.append(_next_token_losses(logits, batch)[0])
        ablated = torch.cat(ablated)
        ablated_by = {names[i]: float(ablated[labels == i].mean()) for i in present}
        out[name] = {
            "units": [[int(layer), int(neuron)] for layer, neuron in units],
            "loss_delta": {label: ablated_by[label] - clean_by[label] for label in ablated_by},
            "clean": clean_by,
            "ablated": ablated_by,
            "n_tokens": {names[i]: int((labels == i).sum()) for i in present},
        }
        if on_result is not None:
            on_result(name, out[name])
    return out


def context_split(effect: dict, in_labels: Sequence[str]) -> dict:
    """Token-weighted mean loss change of one ablation_effects entry on the feature's own labels
    ("in_context") and on all others ("out_of_context"); None where no label is on that side."""
    out = {}
    for name, keep in (("in_context", True), ("out_of_context", False)):
        labels = [lab for lab in effect["loss_delta"] if (lab in in_labels) == keep]
        n = sum(effect["n_tokens"][lab] for lab in labels)
        out[name] = (
            sum(effect["loss_delta"][lab] * effect["n_tokens"][lab] for lab in labels) / n if n else None
        )
    return out


def rank_by_ablation(
    model, dataset, rows: Sequence[dict], in_labels: Sequence[str], n_candidates: int = 8, batch_size: int = 8
) -> list[dict]:
    """Re-rank the first `n_candidates` rows of best_neurons (best train F1 first) by what zeroing each
    neuron does: its selectivity, the next-token loss increase on the feature's own labels minus that on
    the other labels (context_split of ablation_effects on `dataset`, which should be training documents
    of every label). The rest of the rows keep their order after them.

    Why: on a small corpus many neurons separate the documents perfectly, and the probe statistics then
    favour a shallow neuron that fires on the feature's words but which the model uses for everything
    (zeroing SmolLM2's L1 N83, a perfect French detector on 24 documents, raises English loss more than
    French). "The French neuron" of the literature (Gurnee et al. 2023) is a context neuron: it tells the
    documents apart and zeroing it hurts French text and little else. Returns new dicts with
    "selectivity", "in_context" and "out_of_context" added to the re-ranked ones; each re-ranked row
    costs one ablated pass over `dataset`.
    """
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be at least 1, got {n_candidates}")
    missing = sorted(set(in_labels) - set(dataset.label_names))
    if missing:
        raise ValueError(f"labels {missing} are not in the dataset (it has {dataset.label_names})")
    head, tail = [dict(r) for r in rows[:n_candidates]], [dict(r) for r in rows[n_candidates:]]
    if not head:
        return []
    sets = {str(i): [(r["layer"], r["neuron"])] for i, r in enumerate(head)}
    effects = ablation_effects(model, dataset, sets, batch_size=batch_size)
    for i, row in enumerate(head):
        split = context_split(effects[str(i)], in_labels)
        if split["in_context"] is None or split["out_of_context"] is None:
            raise ValueError("the ablation documents need tokens of the feature's labels and of others")
        row.update(split, selectivity=split["in_context"] - split["out_of_context"])
    # stable sort: equal selectivity keeps the probe ranking
    return sorted(head, key=lambda r: r["selectivity"], reverse=True) + tail


# ---- superposition fingerprints ---------------------------------------------------------------------------
def superposition_fingerprint(model, dataset=None, batch_size: int = 8) -> list[dict]:
    """Per-layer statistics of the MLP neurons (Gurnee et al.'s fingerprint, adapted to biasless models).

    Always: median input-weight norm |W_in[:, n]| (and |W_gate[:, n]| for GLU MLPs). With input biases:
    the median of |W_in[:, n]| * b_in[n] (the paper's statistic; strongly negative = neurons that need a
    large input to fire). Without biases but with `dataset`: the pre-activation (mlp.pre) distribution,
    its median over neurons of each neuron's mean and the share of positive values.
    """
    w = model.weights
    n_layers = model.cfg.n_layers
    rows = []
    for layer in range(n_layers):
        w_in_norm = w.W_in(layer).detach().float().norm(dim=0)  # [d_mlp]
        row = {"layer": layer, "w_in_norm_median": float(w_in_norm.median())}
        gate = w.W_gate(layer)
        if gate is not None:
            row["w_gate_norm_median"] = float(gate.detach().float().norm(dim=0).median())
        bias = w.b_in(layer)
        if bias is not None:
            row["norm_times_bias_median"] = float((w_in_norm * bias.detach().float()).median())
        rows.append(row)
    if dataset is not None and w.b_in(0) is None:
        sites = [f"blocks.{layer}.mlp.pre" for layer in range(n_layers)]
        sums = torch.zeros(n_layers, model.cfg.d_mlp, dtype=torch.float64)
        positive = torch.zeros(n_layers, dtype=torch.float64)
        count = 0
        for batch, acts in iter_batches(model, dataset, sites, batch_size):
            real = batch["doc_ids"] >= 0
            for layer, site in enumerate(sites):
                pre = acts[site][real]  # [n_real, d_mlp]
                sums[layer] += pre.double().sum(0)
                positive[layer] += float((pre > 0).sum())
            count += int(real.sum())
        for layer, row in enumerate(rows):
            row["pre_mean_median"] = float((sums[layer] / max(count, 1)).median())
            row["pre_positive_share"] = float(positive[layer] / max(count * model.cfg.d_mlp, 1))
    return rows
