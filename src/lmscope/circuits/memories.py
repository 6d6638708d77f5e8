"""MLP neurons as key-value memories (Geva et al. 2021, arXiv 2012.14913).

A neuron's input weights are a *key*: the neuron fires on the contexts that match it (its triggers). Its
output weights are a *value*: the direction it adds to the residual stream, read here as the vocabulary it
promotes (features.neurons.vocab_projection: through the final norm's weight and W_U). Geva et al. found
that in upper layers the value's top tokens tend to be the tokens that follow the trigger contexts;
`agreement` measures that: the share of triggers whose next token is among the value's top promoted tokens.

Gated (GLU) MLPs give activations of both signs. sign=+1 (default) takes the most positive activations,
where the neuron adds its value as is; sign=-1 the most negative ones, where it adds the negated value (its
promoted and suppressed tokens then swap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..features.neurons import unit_activations, vocab_projection
from ..model.sites import Component, format_component, parse_component
from .text import text_dataset


@dataclass
class Memory:
    """One neuron. triggers: its top contexts, each {"tokens", "acts", "peak", "label"} (peak = the firing
    token); next_tokens[i]: the token after trigger i's peak ("" at a document end); promoted/suppressed:
    [[token, logit effect], ...] of its value; agreement: share of triggers whose next token is promoted."""

    layer: int
    neuron: int
    sign: int
    triggers: list[dict]
    next_tokens: list[str]
    promoted: list[list]
    suppressed: list[list]
    agreement: float

    @property
    def name(self) -> str:
        """The neuron's canonical name, e.g. 'blocks.20.mlp.post[123]'."""
        return format_component(self.layer, "mlp.post", self.neuron)

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass
class _Rows:
    """Real tokens in text order: tokens, doc_ids, positions [n]; labels [n] (index into label_names or
    -1); acts [n, n_units]."""

    tokens: Tensor
    doc_ids: Tensor
    positions: Tensor
    labels: Tensor
    label_names: list[str]
    acts: Tensor


def key_value_memories(
    model,
    layer: int | str,
    neurons: Sequence[int | str],
    *,
    store=None,
    dataset=None,
    n_tokens: int = 16384,
    k: int = 10,
    vocab_k: int = 10,
    context: tuple[int, int] = (16, 3),
    sign: int = 1,
    corpus=None,
) -> list[Memory]:
    """Key (trigger contexts) and value (promoted vocabulary) of each neuron of blocks.{layer}.mlp.post.

    layer: an int or the MLP's name ('blocks.20.mlp' or 'blocks.20.mlp.post'); neurons: indices or names
    ('blocks.20.mlp.post[123]', 'L20N123') of neurons in that layer.

    Activations come from `store` (an ActivationStore or its folder, holding that site), else from a run
    over `dataset` (a TokenDataset), else over n_tokens of corpus text (see circuits.text). k triggers per
    neuron, at most one per document; context = tokens (before, after) the peak shown.
    """
    layer, neurons = _neurons(model, layer, neurons)
    if sign not in (1, -1):
        raise ValueError(f"sign must be 1 or -1, got {sign}")
    if store is not None:
        rows = _store_rows(store, f"blocks.{layer}.mlp.post", neurons)
    else:
        rows = _run_rows(model, layer, neurons, dataset, n_tokens, corpus)
    values = vocab_projection(model, layer, neurons, vocab_k)
    decode = model.tokenizer.decode
    memories = []
    for u, neuron in enumerate(neurons):
        picked = _top_rows(sign * rows.acts[:, u], rows.doc_ids, k)
        triggers = [_example(rows, u, i, context, decode) for i in picked]
        following = [_next_token(rows, i, decode) for i in picked]
        value = values[u]
        promoted, suppressed = value["promoted"], value["suppressed"]
        if sign < 0:  # a negative activation adds the negated value: the two lists swap, effects flip
            promoted, suppressed = _negated(suppressed), _negated(promoted)
        top = {t for t, _ in promoted}
        hits = sum(t in top for t in following if t)
        memories.append(
            Memory(layer, neuron, sign, triggers, following, promoted, suppressed, hits / max(len(picked), 1))
        )
    return memories


def _neurons(model, layer: int | str, neurons: Sequence[int | str]) -> tuple[int, list[int]]:
    """(layer, neuron indices) from ints or component names, all of one MLP layer."""
    if isinstance(layer, (str, Component)):
        layer = parse_component(layer, model.cfg, kinds=("mlp", "mlp.post"), indexed=False, what="MLP").layer
    layer = int(layer)
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer}: this model has layers 0..{model.cfg.n_layers - 1}")
    out = []
    for n in neurons:
        if isinstance(n, (str, Component)):
            unit = parse_component(n, model.cfg, kinds=("mlp.post",), indexed=True, what="neuron")
            if unit.layer != layer:
                raise ValueError(f"neuron {unit} is not in layer {layer}; give neurons of one layer")
            n = unit.index
        out.append(int(n))
    if any(not 0 <= n < model.cfg.d_mlp for n in out):
        raise ValueError(f"neurons {out}: this model's MLPs have neurons 0..{model.cfg.d_mlp - 1}")
    return layer, out


def _negated(pairs: list[list]) -> list[list]:
    return [[token, -effect] for token, effect in pairs]


def _store_rows(store, site: str, neurons: list[int]) -> _Rows:
    from ..data.store_reader import ActivationStore

    store = store if isinstance(store, ActivationStore) else ActivationStore(Path(store))
    if site not in store.sites:
        raise ValueError(
            f"the store at {store.path} holds {store.sites}, not {site!r}; harvest that site first"
        )
    info = store.token_info()
    real = info["doc_ids"] >= 0  # BOS rows belong to no document
    acts = torch.cat([part[:, neurons].float() for part in _chunks(store, site)])[real]
    fields = [info[name][real] for name in ("tokens", "doc_ids", "positions", "labels")]
    return _Rows(*fields, store.label_names, acts)


def _chunks(store, site: str, size: int = 65536):
    for start in range(0, store.n_tokens, size):
        yield store.read(site, start, start + size)


def _run_rows(model, layer: int, neurons: list[int], dataset, n_tokens: int, corpus) -> _Rows:
    units = [(layer, n) for n in neurons]
    if dataset is None:
        dataset = text_dataset(model, n_tokens, split="train", corpus=corpus)
    acts = unit_activations(model, dataset, units)  # [n_ctx, ctx_len, n_units]
    real = dataset.doc_ids >= 0
    return _Rows(
        dataset.tokens[real], dataset.doc_ids[real], dataset.positions[real], dataset.labels[real],
        list(dataset.label_names), acts[real],
    )  # fmt: skip


def _top_rows(values: Tensor, doc_ids: Tensor, k: int) -> list[int]:
    """Rows of the k largest values, one per document."""
    picked, seen = [], set()
    for i in values.argsort(descending=True).tolist():
        doc = int(doc_ids[i])
        if doc not in seen:
            seen.add(doc)
            picked.append(i)
            if len(picked) == k:
                break
    return picked


def _same_text(rows: _Rows, i: int, j: int) -> bool:
    """Row j continues row i's document at the right distance (no gap from a BOS or a document border)."""
    return (
        0 <= j < len(rows.tokens)
        and int(rows.doc_ids[j]) == int(rows.doc_ids[i])
        and int(rows.positions[j]) - int(rows.positions[i]) == j - i
    )


def _example(rows: _Rows, unit: int, i: int, context: tuple[int, int], decode) -> dict:
    keep = [j for j in range(i - context[0], i + context[1] + 1) if _same_text(rows, i, j)]
    label = int(rows.labels[i])
    return {
        "tokens": [decode([int(rows.tokens[j])]) for j in keep],
        "acts": [round(float(rows.acts[j, unit]), 4) for j in keep],
        "peak": keep.index(i),
        "label": rows.label_names[label] if 0 <= label < len(rows.label_names) else "",
    }


def _next_token(rows: _Rows, i: int, decode) -> str:
    return decode([int(rows.tokens[i + 1])]) if _same_text(rows, i, i + 1) else ""
