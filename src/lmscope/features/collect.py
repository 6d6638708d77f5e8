"""Activations for probing, gathered from a model over a TokenDataset (lmscope.data.tokens).

    doc = document_means(model, dataset, sites=["blocks.*.mlp.post"])   # doc.means [n_docs, n_sites, d]
    rows, pos, y = bigram_examples(dataset, model.tokenizer, " standard", " output")
    X = token_activations(model, dataset, rows, pos, sites)             # [n, n_sites, d]

Sequence-level features (a document's language) are read from the mean over the document's tokens;
token-level ones (a bigram) from the activation at one token. Only what is asked for is kept, never every
token of every site, so memory stays at [n_docs or n_examples, n_sites, d].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm


def iter_batches(
    model, dataset, sites: Sequence[str], batch_size: int = 8, progress: bool = False, desc: str = ""
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """Run the model over the dataset in batches: yields (batch, {site: [batch, ctx_len, ...]}).

    batch is a dict of [batch, ctx_len] tensors (tokens, labels, doc_ids, positions, attention_mask). The
    forward stops after the last requested site, so early sites cost only the layers they need.
    """
    names = model.resolve_sites(sites)
    batches = dataset.batches(batch_size)
    total = (len(dataset) + batch_size - 1) // batch_size
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc=desc or "activations", disable=not progress):
            _, cache = model.run_with_cache(
                batch["tokens"], sites=names, attention_mask=batch["attention_mask"], stop_at=names[-1]
            )
            yield batch, {name: cache[name].float() for name in names}


@dataclass
class DocumentMeans:
    """Mean activation of each document over its tokens (BOS and padding excluded).

    means [n_docs, n_sites, d]; doc_index [n_docs] indexes dataset.doc_keys; labels [n_docs] index
    label_names; n_tokens [n_docs]; sample: site -> [n_sample, d] activations of randomly drawn tokens
    (kept only when asked; for statistics that need single tokens, such as kurtosis).
    """

    means: Tensor
    doc_index: Tensor
    labels: Tensor
    n_tokens: Tensor
    label_names: list[str]
    sites: list[str]
    sample: dict[str, Tensor] = field(default_factory=dict)

    def select(self, keep: Tensor) -> DocumentMeans:
        """The documents where `keep` [n_docs] (bool) is true (the token sample is shared, not filtered)."""
        return DocumentMeans(
            self.means[keep],
            self.doc_index[keep],
            self.labels[keep],
            self.n_tokens[keep],
            self.label_names,
            self.sites,
            self.sample,
        )


def document_means(
    model,
    dataset,
    sites: str | Sequence[str] = "blocks.*.mlp.post",
    batch_size: int = 8,
    sample_tokens: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> DocumentMeans:
    """One pass over `dataset`: per-document means of each site ([n_docs, n_sites, d]), plus, with
    sample_tokens > 0, the activations of that many random document tokens per site."""
    names = model.resolve_sites([sites] if isinstance(sites, str) else sites)
    widths = {model_site_width(model, name) for name in names}
    if len(widths) != 1:
        raise ValueError(f"sites {names} have different widths {sorted(widths)}; give sites of one width")
    real = dataset.doc_ids >= 0  # [n_ctx, ctx_len]
    docs = torch.unique(dataset.doc_ids[real])  # sorted doc indices present
    slot = torch.full((int(docs.max()) + 1,), -1, dtype=torch.long)
    slot[docs] = torch.arange(docs.numel())
    sums = torch.zeros(docs.numel(), len(names), widths.pop(), dtype=torch.float64)
    counts = torch.zeros(docs.numel(), dtype=torch.float64)
    labels = torch.full((docs.numel(),), -1, dtype=torch.long)
    # Random tokens to keep whole, chosen up front by their flat index among real tokens.
    picked = torch.zeros(real.numel(), dtype=torch.bool)
    if sample_tokens > 0:
        flat = real.flatten().nonzero().flatten()
        gen = torch.Generator().manual_seed(seed)
        picked[flat[torch.randperm(flat.numel(), generator=gen)[:sample_tokens]]] = True
    picked = picked.view_as(real)
    sample: dict[str, list[Tensor]] = {name: [] for name in names}
    row = 0
    for batch, acts in iter_batches(model, dataset, names, batch_size, progress, "document means"):
        mask = batch["doc_ids"] >= 0
        target = slot[batch["doc_ids"][mask]]  # [n_real]
        for s, name in enumerate(names):  # one site at a time: no [n_real, n_sites, d] float64 copy
            sums[:, s].index_add_(0, target, acts[name][mask].double())
        counts.index_add_(0, target, torch.ones_like(target, dtype=torch.float64))
        labels[target] = batch["labels"][mask]
        chosen = picked[row : row + mask.shape[0]]
        for name in names:
            sample[name].append(acts[name][chosen])
        row += mask.shape[0]
    return DocumentMeans(
        means=(sums / counts[:, None, None]).float(),
        doc_index=docs,
        labels=labels,
        n_tokens=counts.long(),
        label_names=list(dataset.label_names),
        sites=names,
        sample={name: torch.cat(parts) for name, parts in sample.items()} if sample_tokens else {},
    )


def model_site_width(model, site: str) -> int:
    """The last-axis width of a per-token site (d_mlp for mlp sites, d_model for the residual)."""
    return model.cfg.d_mlp if ".mlp.pre" in site or ".mlp.post" in site else model.cfg.d_model


def token_activations(
    model, dataset, rows: Tensor, positions: Tensor, sites: str | Sequence[str], batch_size: int = 8
) -> Tensor:
    """Activations at chosen tokens: [n, n_sites, d] for (rows[i], positions[i]) of dataset.

    Only the contexts that hold a chosen token are run.
    """
    names = model.resolve_sites([sites] if isinstance(sites, str) else sites)
    rows, positions = torch.as_tensor(rows).long(), torch.as_tensor(positions).long()
    if rows.shape != positions.shape or rows.dim() != 1:
        raise ValueError(
            f"rows and positions must both be [n]; got {tuple(rows.shape)}, {tuple(positions.shape)}"
        )
    needed = torch.unique(rows)
    out = torch.zeros(rows.numel(), len(names), model_site_width(model, names[0]))
    for start in range(0, needed.numel(), batch_size):
        chunk = needed[start : start + batch_size]
        sub = dataset[chunk.tolist()]
        [(_, acts)] = list(iter_batches(model, sub, names, batch_size=len(chunk)))
        for j, r in enumerate(chunk.tolist()):
            hits = (rows == r).nonzero().flatten()
            for s, name in enumerate(names):
                out[hits, s] = acts[name][j, positions[hits]]
    return out


def _match_at(tokens: Tensor, ids: Sequence[int], end_offset: int) -> Tensor:
    """[n_ctx, ctx_len] bool: the token ids `ids` end at position p - end_offset."""
    n, width = tokens.shape
    hit = torch.ones(n, width, dtype=torch.bool)
    for i, tok in enumerate(reversed(ids)):
        shift = end_offset + i
        col = torch.zeros(n, width, dtype=torch.bool)
        col[:, shift:] = tokens[:, : width - shift] == tok
        hit &= col
    return hit


def bigram_examples(
    dataset,
    tokenizer,
    first: str,
    second: str,
    max_examples: int = 600,
    positive_share: float = 0.5,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """A token-level feature: is `second` preceded by `first` (e.g. " standard" + " output")?

    Examples are the last token of each occurrence of `second`: positive where `first` comes right before
    it in the same document, negative where something else does. Returns (rows [n], positions [n], y [n]
    bool) into dataset, at most max_examples, with about `positive_share` positives (all of them if fewer).
    """
    first_ids = tokenizer(first, add_special_tokens=False)["input_ids"]
    second_ids = tokenizer(second, add_special_tokens=False)["input_ids"]
    if not first_ids or not second_ids:
        raise ValueError(f"{first!r} or {second!r} has no tokens")
    tokens, doc = dataset.tokens, dataset.doc_ids
    span = len(first_ids) + len(second_ids) - 1
    same_doc = torch.zeros_like(doc, dtype=torch.bool)
    same_doc[:, span:] = doc[:, span:] == doc[:, : doc.shape[1] - span]
    ends = _match_at(tokens, second_ids, 0) & (doc >= 0)
    positive = ends & _match_at(tokens, first_ids, len(second_ids)) & same_doc
    negative = ends & ~positive
    pos_idx, neg_idx = positive.flatten().nonzero().flatten(), negative.flatten().nonzero().flatten()
    if pos_idx.numel() == 0 or neg_idx.numel() == 0:
        raise ValueError(
            f"the dataset has {pos_idx.numel()} occurrences of {first + second!r} and {neg_idx.numel()} of "
            f"{second!r} after something else; a probe needs both: pick a more frequent bigram"
        )
    gen = torch.Generator().manual_seed(seed)
    n_pos = min(pos_idx.numel(), round(max_examples * positive_share))
    n_neg = min(neg_idx.numel(), max_examples - n_pos)
    pos_idx = pos_idx[torch.randperm(pos_idx.numel(), generator=gen)[:n_pos]]
    neg_idx = neg_idx[torch.randperm(neg_idx.numel(), generator=gen)[:n_neg]]
    flat = torch.cat([pos_idx, neg_idx])
    y = torch.cat([torch.ones(n_pos, dtype=torch.bool), torch.zeros(n_neg, dtype=torch.bool)])
    width = tokens.shape[1]
    return flat // width, flat % width, y


def frequent_bigram(dataset, tokenizer, min_count: int = 15) -> tuple[str, str] | None:
    """A two-word phrase for a token-level probe, or None when no pair occurs `min_count` times.

    Among adjacent word tokens (a space, then 4+ letters: this leaves out "the", "for", ...) in one
    document, the pair (a, b) maximising min(#(a b), #(b after another word)) * #(a b) / #a: both classes
    well represented, and a usually followed by b (a set phrase such as " fully specified")."""
    from collections import Counter

    tokens, doc = dataset.tokens, dataset.doc_ids
    same = (doc[:, 1:] >= 0) & (doc[:, 1:] == doc[:, :-1])
    firsts, seconds = tokens[:, :-1][same].tolist(), tokens[:, 1:][same].tolist()
    pairs, n_first, n_second = Counter(zip(firsts, seconds)), Counter(firsts), Counter(seconds)
    decoded: dict[int, str] = {}

    def word(i: int) -> bool:
        if i not in decoded:
            decoded[i] = tokenizer.decode([i])
        text = decoded[i]
        return text.startswith(" ") and len(text.strip()) >= 4 and text.strip().isalpha()

    best, best_score = None, 0.0
    for (a, b), n_ab in pairs.most_common(5000):
        if n_ab < min_count:
            break
        score = min(n_ab, n_second[b] - n_ab) * n_ab / n_first[a]
        if score > best_score and word(a) and word(b):
            best, best_score = (decoded[a], decoded[b]), score
    return best
