"""Inspecting and using features: activations over a corpus, feature cards, steering.

    acts = FeatureActivations.from_model(sae, model, dataset)        # or .from_store(sae, store)
    cards = feature_cards(sae, model, acts, ablate=8)               # one dict per feature (the unit-card format)
    with model.intervene(steer(sae, feature=123, scale=8.0)): ...    # add the feature's decoder direction

A card holds the feature's density, activation histogram, top contexts and examples from each activation
quantile (every example: {"tokens", "acts", "peak", "label"}), the tokens its decoder direction promotes and
suppresses through the unembedding, its nearest features by decoder cosine and, for the features asked,
the change in next-token loss when it is ablated (its contribution f_i * W_dec[i] subtracted).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...model import AddDirection, Hook
from ...model.sites import split_site
from .model import SAE

BEFORE, AFTER = 12, 4  # tokens shown before and after an example's peak


@dataclass
class FeatureActivations:
    """Sparse feature activations over N tokens, and where the tokens come from.

    tokens, labels, segment [N]: token id, label index (-1 = none) and context index of every token;
    the rows of one context are consecutive and in order. skip [N]: rows not encoded (BOS, and tokens
    above the SAE's max_norm).
    index [nnz] (row), feature [nnz], value [nnz]: the nonzero activations, sorted by feature, then row;
    starts [d_sae + 1]: feature j's entries are starts[j]:starts[j+1].
    """

    tokens: Tensor
    labels: Tensor
    segment: Tensor
    skip: Tensor
    index: Tensor
    feature: Tensor
    value: Tensor
    starts: Tensor
    label_names: list[str]

    @property
    def n_tokens(self) -> int:
        """Tokens encoded (skipped rows left out): the denominator of the densities."""
        return int((~self.skip).sum())

    @classmethod
    @torch.no_grad()
    def build(cls, sae: SAE, rows, tokens, labels, segment, skip, label_names, batch=4096, progress=True):
        """rows(start, stop) -> activations [n, d_in] of rows start..stop."""
        n, skip = len(tokens), skip.clone()
        index, feature, value = [], [], []
        for start in tqdm(range(0, n, batch), desc="feature activations", disable=not progress):
            stop = min(start + batch, n)
            x = rows(start, stop).float()
            if sae.cfg.max_norm is not None:  # massive activations are not encoded, like BOS
                skip[start:stop] |= x.norm(dim=1) > sae.cfg.max_norm
            keep = (~skip[start:stop]).nonzero().squeeze(1)
            r, c, v = sae.encode_sparse(x[keep])
            index.append((keep[r] + start).int())
            feature.append(c.int())
            value.append(v)
        index, feature, value = torch.cat(index), torch.cat(feature), torch.cat(value)
        order = torch.argsort(feature.long() * n + index.long())
        feature = feature[order]
        starts = torch.zeros(sae.d_sae + 1, dtype=torch.long)
        starts[1:] = torch.bincount(feature.long(), minlength=sae.d_sae).cumsum(0)
        return cls(
            tokens, labels, segment, skip, index[order], feature, value[order], starts, list(label_names)
        )

    @classmethod
    def from_model(
        cls, sae: SAE, model, dataset, n_contexts: int | None = 512, batch_size: int = 16, progress=True
    ):
        """Run `model` (stopping at the SAE's site) over contexts of a TokenDataset."""
        [site] = model.resolve_sites([sae.cfg.site])
        ds = dataset if n_contexts is None else dataset[:n_contexts]
        real = ds.attention_mask.bool()
        acts = []
        for i in tqdm(range(0, len(ds), batch_size), desc="running the model", disable=not progress):
            part = slice(i, i + batch_size)
            _, cache = model.run_with_cache(
                ds.tokens[part], sites=[site], attention_mask=ds.attention_mask[part], stop_at=site
            )
            act = cache[site]
            acts.append(act.reshape(*act.shape[:2], -1)[real[part]].float())
        acts = torch.cat(acts)
        segment = torch.arange(len(ds))[:, None].expand_as(ds.tokens)[real]
        return cls.build(
            sae,
            lambda a, b: acts[a:b],
            ds.tokens[real],
            ds.labels[real],
            segment,
            ds.doc_ids[real] < 0,
            ds.label_names,
            progress=progress,
        )

    @classmethod
    def from_store(
        cls, sae: SAE, store, site: str | None = None, n_tokens: int | None = 200_000, progress=True
    ):
        """Read the SAE's site from an ActivationStore (no model run). Contexts start at BOS rows."""
        site = site or sae.cfg.site
        info = store.token_info()
        n = len(info["tokens"]) if n_tokens is None else min(n_tokens, len(info["tokens"]))
        bos = info["doc_ids"][:n] < 0
        return cls.build(
            sae,
            lambda a, b: store.read(site, a, b),
            info["tokens"][:n],
            info["labels"][:n],
            bos.long().cumsum(0),  # packed contexts begin with BOS
            bos,
            store.label_names,
            progress=progress,
        )

    def of(self, feature: int) -> tuple[Tensor, Tensor]:
        """(rows [n], values [n]) where `feature` fires, sorted by row."""
        a, b = int(self.starts[feature]), int(self.starts[feature + 1])
        return self.index[a:b].long(), self.value[a:b]

    def stats(self) -> dict:
        """The feature_stats.json record: density, max_act, mean_act (over all tokens) per feature."""
        d_sae = len(self.starts) - 1
        starts, values = self.starts.numpy(), self.value.double().numpy()
        counts = np.diff(starts)
        nonempty = counts > 0  # reduceat over the nonempty features' starts: each spans its own entries
        max_act, sums = np.zeros(d_sae), np.zeros(d_sae)
        if values.size:
            max_act[nonempty] = np.maximum.reduceat(values, starts[:-1][nonempty])
            sums[nonempty] = np.add.reduceat(values, starts[:-1][nonempty])
        n = max(self.n_tokens, 1)
        return {
            "n_features": d_sae,
            "n_tokens": self.n_tokens,
            "density": (counts / n).tolist(),
            "max_act": max_act.tolist(),
            "mean_act": (sums / n).tolist(),
        }

    def context(self, segment: int) -> Tensor:
        """Rows of context `segment` [n]."""
        lo = int(torch.searchsorted(self.segment, segment))
        hi = int(torch.searchsorted(self.segment, segment, right=True))
        return torch.arange(lo, hi)

    def __post_init__(self):
        # numpy copies for the per-example work (scalar indexing is ~50x cheaper than on tensors)
        self._segment = self.segment.numpy()
        self._tokens = self.tokens.numpy()
        self._labels = self.labels.numpy()
        change = np.flatnonzero(np.diff(self._segment)) + 1
        starts, stops = np.concatenate([[0], change]), np.concatenate([change, [len(self._segment)]])
        self._ctx_start = np.repeat(starts, stops - starts)  # [N] first row of each row's context
        self._ctx_stop = np.repeat(stops, stops - starts)  # [N] one past its last row


class _TokenText:
    """Token id -> its text (decoded alone, cached)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token]) if self.tokenizer is not None else str(token)
        return self.cache[token]


def _example(
    acts: FeatureActivations, rows: np.ndarray, values: np.ndarray, peak_row: int, text: _TokenText
) -> dict:
    """{"tokens", "acts", "peak", "label"} for the window around row `peak_row` (within its context).
    rows [n] (sorted) and values [n]: where the feature fires."""
    lo = max(peak_row - BEFORE, int(acts._ctx_start[peak_row]))
    hi = min(peak_row + AFTER + 1, int(acts._ctx_stop[peak_row]))
    window_acts = np.zeros(hi - lo, dtype=np.float32)
    a, b = np.searchsorted(rows, [lo, hi])
    window_acts[rows[a:b] - lo] = values[a:b]
    label = int(acts._labels[peak_row])
    return {
        "tokens": [text(int(t)) for t in acts._tokens[lo:hi]],
        "acts": [round(float(v), 4) for v in window_acts],
        "peak": peak_row - lo,
        "label": acts.label_names[label] if 0 <= label < len(acts.label_names) else "",
    }


def _distinct_contexts(
    acts: FeatureActivations, rows: np.ndarray, order: np.ndarray, limit: int
) -> np.ndarray:
    """The first positions of `order` (into rows) whose contexts are all different, up to `limit`."""
    order = order[: 64 * limit]  # enough candidates for `limit` distinct contexts in practice
    _, first = np.unique(acts._segment[rows[order]], return_index=True)
    return order[np.sort(first)[:limit]]


def output_directions(sae: SAE, model) -> Tensor | None:
    """Each feature's decoder direction written into the residual stream [d_sae, d_model], or None
    where the site has no linear path to it (the residual, attn/mlp outputs, mlp neurons, attn.z)."""
    layer, suffix = split_site(sae.cfg.site)
    W_dec = sae.W_dec.detach()
    if suffix in ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out", "embed"):
        return W_dec
    if suffix == "mlp.post":
        return W_dec @ model.weights.W_out(layer).detach().float()
    if suffix == "attn.z":
        W_O = model.weights.W_O(layer).detach().float()  # [heads, d_head, d_model]
        return W_dec.view(sae.d_sae, *W_O.shape[:2]).flatten(1) @ W_O.flatten(0, 1)
    return None


@torch.no_grad()
def logit_effects(sae: SAE, model, top: int = 10, chunk: int = 256) -> tuple[list, list] | None:
    """Per feature, the `top` tokens its output direction promotes and suppresses through the final norm's
    weight and the unembedding: ([[(token, effect), ...] per feature], same for suppressed)."""
    directions = output_directions(sae, model)
    if directions is None:
        return None
    W_U = model.weights.W_U.detach().float()
    norm_w = model.weights.ln_final_w.detach().float()
    text = _TokenText(model.tokenizer)
    promoted, suppressed = [], []
    for i in range(0, len(directions), chunk):
        effects = (directions[i : i + chunk] * norm_w) @ W_U  # [chunk, d_vocab]
        for order, out in ((effects.topk(top, dim=1), promoted), ((-effects).topk(top, dim=1), suppressed)):
            for vals, ids in zip(order.values.tolist(), order.indices.tolist()):
                sign = 1 if out is promoted else -1
                out.append([[text(t), float(f"{sign * v:.4g}")] for t, v in zip(ids, vals)])
    return promoted, suppressed


def ablate_feature(sae: SAE, feature: int, site: str | None = None) -> Hook:
    """An intervention removing one feature's contribution f_i(x) * W_dec[i] (the SAE's error term stays)."""
    direction = sae.W_dec[feature].detach()

    def fn(act: Tensor, _site: str) -> Tensor:
        flat = act.reshape(*act.shape[:2], -1)
        f = sae.encode(flat.float())[..., feature]  # [batch, pos]
        return (flat - f[..., None] * direction).reshape(act.shape).to(act.dtype)

    return Hook(site or sae.cfg.site, fn=fn)


def steer(sae: SAE, feature: int, scale: float = 4.0, site: str | None = None) -> AddDirection:
    """Steering: add scale * W_dec[feature] at the SAE's site (every position)."""
    if not 0 <= feature < sae.d_sae:
        raise IndexError(f"feature {feature} out of range: this SAE has features 0..{sae.d_sae - 1}")
    return AddDirection(site or sae.cfg.site, direction=sae.W_dec[feature].detach(), scale=scale)


@torch.no_grad()
def ablation_effect(sae: SAE, model, acts: FeatureActivations, feature: int, n_contexts: int = 8) -> dict:
    """Mean change of next-token loss, per label and overall ("all"), when `feature` is ablated in the
    contexts where it fires most. -> {label: loss_delta}"""
    rows, values = acts.of(feature)
    if len(rows) == 0:
        return {}
    rows = rows.numpy()
    chosen = _distinct_contexts(acts, rows, np.argsort(-values.numpy(), kind="stable"), n_contexts)
    contexts = [acts.context(int(acts._segment[rows[i]])) for i in chosen]
    width = max(len(c) for c in contexts)
    ids = torch.zeros(len(contexts), width, dtype=torch.long)
    mask = torch.zeros(len(contexts), width, dtype=torch.long)
    for j, c in enumerate(contexts):
        ids[j, : len(c)], mask[j, : len(c)] = acts.tokens[c], 1
    m = None if bool(mask.all()) else mask
    clean = model(ids, attention_mask=m)
    ablated = model.run(ids, attention_mask=m, interventions=[ablate_feature(sae, feature)])
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    target = ids[:, 1:, None]
    delta = (
        clean[:, :-1].float().log_softmax(-1).gather(-1, target)
        - ablated[:, :-1].float().log_softmax(-1).gather(-1, target)
    ).squeeze(-1)  # loss(ablated) - loss(clean)
    out = {"all": round(float(delta[valid].mean()), 5)}
    for j, c in enumerate(contexts):
        label = int(acts.labels[c[min(1, len(c) - 1)]])
        name = acts.label_names[label] if 0 <= label < len(acts.label_names) else "?"
        out.setdefault(name, []).append(delta[j][valid[j]])
    return {k: (v if k == "all" else round(float(torch.cat(v).mean()), 5)) for k, v in out.items()}


def _nearest(sae: SAE, top: int = 5, chunk: int = 1024) -> list[list]:
    """Per feature, the `top` other features with the most similar decoder direction: [[(index, cos)]]."""
    W = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = []
    for i in range(0, len(W), chunk):
        cos = W[i : i + chunk] @ W.T
        cos[torch.arange(len(cos)), torch.arange(i, i + len(cos))] = -2  # not itself
        vals, idx = cos.topk(min(top, len(W) - 1), dim=1)
        out += [[(int(j), round(float(v), 4)) for j, v in zip(r_i, r_v)] for r_i, r_v in zip(idx, vals)]
    return out


def _examples(
    acts, rows: np.ndarray, values: np.ndarray, text, rng, n_top: int, n_quantiles: int, per_quantile: int
) -> dict:
    """A card's histogram, top examples, quantile examples and most common tokens (feature fires at rows)."""
    counts, edges = np.histogram(values, bins=20, range=(0.0, float(values.max()) + 1e-6))
    by_value = np.argsort(-values, kind="stable")
    top = _distinct_contexts(acts, rows, by_value, n_top)
    common = Counter(acts._tokens[rows[by_value[:50]]].tolist()).most_common(5)
    quantiles = []
    qs = np.quantile(values, np.linspace(0, 1, n_quantiles + 1))
    for lo, hi in zip(qs[:-1], qs[1:]):
        inside = np.flatnonzero((values >= lo) & (values <= hi))
        chosen = _distinct_contexts(acts, rows, rng.permutation(inside), per_quantile)
        examples = [_example(acts, rows, values, int(rows[j]), text) for j in chosen]
        quantiles.append({"range": [round(float(lo), 4), round(float(hi), 4)], "examples": examples})
    return {
        "histogram": {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()},
        "top_examples": [_example(acts, rows, values, int(rows[j]), text) for j in top],
        "quantile_examples": quantiles,
        "extra": {
            "mean_active": round(float(values.mean()), 4),
            "top_tokens": [[text(t), c] for t, c in common],
        },
    }


def feature_cards(
    sae: SAE,
    model,
    acts: FeatureActivations,
    features: Sequence[int] | None = None,
    *,
    n_top: int = 8,
    n_quantiles: int = 4,
    per_quantile: int = 2,
    ablate: int | Sequence[int] = 0,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Unit cards (kind "feature") for `features` (default all). ablate: how many of the densest alive
    features (or which ones) also get the loss effect of ablating them (costs two model runs each)."""
    features = list(range(sae.d_sae)) if features is None else [int(f) for f in features]
    layer, _ = split_site(sae.cfg.site)
    stats = acts.stats()
    effects = logit_effects(sae, model)
    nearest = _nearest(sae)
    text = _TokenText(model.tokenizer)
    rng = np.random.default_rng(seed)
    if isinstance(ablate, int):
        density = torch.tensor(stats["density"])
        ablate = density.argsort(descending=True)[: min(ablate, int((density > 0).sum()))].tolist()
    ablate = set(int(a) for a in ablate)
    prefix = f"{layer}." if layer is not None else f"{sae.cfg.site}."
    cards = []
    for i in tqdm(features, desc="feature cards", disable=not progress):
        rows, values = acts.of(i)
        card = {
            "id": f"{prefix}{i}",
            "kind": "feature",
            "site": sae.cfg.site,
            "index": i,
            "title": f"Feature {i}" + ("" if len(rows) else " (dead on these tokens)"),
            "density": stats["density"][i],
            "max_act": stats["max_act"][i],
            "mean_act": stats["mean_act"][i],
            "histogram": {"edges": [], "counts": []},
            "top_examples": [],
            "quantile_examples": [],
            "promoted": effects[0][i] if effects else [],
            "suppressed": effects[1][i] if effects else [],
            "nearest": [[f"{prefix}{j}", c] for j, c in nearest[i]],
            "extra": {},
        }
        if len(rows):
            card.update(
                _examples(acts, rows.numpy(), values.numpy(), text, rng, n_top, n_quantiles, per_quantile)
            )
            card["title"] = f"Feature {i}: {card['extra']['top_tokens'][0][0].strip() or '(whitespace)'}"
        if i in ablate and len(rows):
            card["ablation"] = {"loss_delta": ablation_effect(sae, model, acts, i)}
        cards.append(card)
    return cards
