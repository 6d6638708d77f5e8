"""Token datasets: documents tokenised and packed into fixed-length contexts, each token keeping its origin.

    ds = tokenize_corpus(model, load_corpus(path, split="train"), ctx_len=128)
    ds.tokens[i, j], ds.labels[i, j] (index into ds.label_names), ds.doc_ids[i, j], ds.positions[i, j]

Packing (pack=True): documents follow one another; every context starts with BOS and every document starts
right after a BOS, so a document cut at a context's end continues after the next context's BOS and its
positions keep counting. BOS and padding carry label, doc id and position -1; padding has mask 0.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .document import Document

_PER_TOKEN = ("tokens", "labels", "doc_ids", "positions", "attention_mask")


@dataclass
class TokenDataset:
    """Packed contexts. Every tensor is int64 [n_ctx, ctx_len].

    tokens: token ids. labels: index into label_names (-1 for BOS and padding). doc_ids: index into
    doc_keys, the ids of the documents tokenised (-1 for BOS and padding). positions: the token's position
    in its document (-1 for BOS and padding). attention_mask: 1 for real tokens (BOS included), 0 for padding.
    meta: how it was made (tokenizer hash, ctx_len, pack, bos id).
    """

    tokens: Tensor
    labels: Tensor
    doc_ids: Tensor
    positions: Tensor
    attention_mask: Tensor
    label_names: list[str]
    doc_keys: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in _PER_TOKEN:
            setattr(self, name, torch.as_tensor(getattr(self, name)).to(torch.int64))
        shape = self.tokens.shape
        if len(shape) != 2:
            raise ValueError(f"tokens must be [n_ctx, ctx_len], got shape {tuple(shape)}")
        bad = [n for n in _PER_TOKEN if getattr(self, n).shape != shape]
        if bad:
            raise ValueError(f"{', '.join(bad)} must have the shape of tokens {tuple(shape)}")
        if self.labels.numel() and int(self.labels.max()) >= len(self.label_names):
            raise ValueError(
                f"labels go up to {int(self.labels.max())} but there are {len(self.label_names)} names"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def ctx_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens, BOS included: what a harvest stores."""
        return int(self.attention_mask.sum())

    def __getitem__(self, index) -> TokenDataset:
        """Contexts by index, slice, list or boolean mask (always a TokenDataset, even for one int)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        rows = {name: getattr(self, name)[index] for name in _PER_TOKEN}
        return TokenDataset(
            **rows, label_names=list(self.label_names), doc_keys=self.doc_keys, meta=dict(self.meta)
        )

    def batches(self, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """Consecutive batches of contexts (the last may be smaller), as dicts with input_ids (also under
        "tokens"), attention_mask, labels, doc_ids and positions, each [batch, ctx_len]. A batch can be given
        to the model as it is: model.run_with_cache(batch, sites)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for i in range(0, len(self), batch_size):
            rows = {name: getattr(self, name)[i : i + batch_size] for name in _PER_TOKEN}
            yield {"input_ids": rows["tokens"], **rows}

    def fingerprint(self) -> str:
        """sha256 of the contents (tokens, mask, labels, doc ids, positions, label names)."""
        h = hashlib.sha256(json.dumps(self.label_names).encode())
        for name in _PER_TOKEN:
            h.update(getattr(self, name).contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file (tensors + label names, doc keys and meta as metadata), written atomically."""
        from safetensors.torch import save

        from ..runs import write_atomic

        metadata = {
            "label_names": json.dumps(self.label_names),
            "doc_keys": json.dumps(self.doc_keys),
            "meta": json.dumps(self.meta),
        }
        data = save({name: getattr(self, name).contiguous() for name in _PER_TOKEN}, metadata=metadata)
        return write_atomic(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenDataset:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if "label_names" not in metadata:
                raise ValueError(f"{path} is not a saved TokenDataset (no label_names in its metadata)")
            tensors = {name: f.get_tensor(name) for name in _PER_TOKEN}
        extra = {k: json.loads(metadata[k]) for k in ("label_names", "doc_keys", "meta")}
        return cls(**tensors, **extra)


def tokenizer_of(model_or_tokenizer):
    """The tokenizer of an lmscope Model, or the argument itself when it is a tokenizer."""
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tok is None or not callable(tok):
        raise ValueError("need a tokenizer: pass a Model that has one, or a Hugging Face tokenizer")
    return tok


def tokenizer_hash(model_or_tokenizer) -> str:
    """sha256 of the tokenizer's full definition (fast tokenizers) or of its vocabulary."""
    tok = tokenizer_of(model_or_tokenizer)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tok.get_vocab().items())) + json.dumps(tok.all_special_tokens)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenize_corpus(
    model_or_tokenizer,
    docs: Sequence[Document | str],
    ctx_len: int = 128,
    pack: bool = True,
    bos: bool | int = True,
    *,
    label_names: Sequence[str] | None = None,
    max_contexts: int | None = None,
) -> TokenDataset:
    """Tokenise documents (no special tokens inside a text) and lay them out in contexts [n, ctx_len].

    pack=True packs documents back to back (see the module docstring); pack=False gives each document its
    own context, cut to ctx_len and padded. bos: True = the tokenizer's BOS (none if it has none), False =
    no BOS at all (packed documents then simply abut), or a token id to use as BOS.
    label_names: the label order (default: sorted labels of `docs`); fix it to tokenise splits alike.
    max_contexts: stop after this many contexts.
    """
    tok = tokenizer_of(model_or_tokenizer)
    docs = [Document(d, "text", "", str(i)) if isinstance(d, str) else d for i, d in enumerate(docs)]
    if not docs:
        raise ValueError("no documents to tokenise")
    bos_id = tok.bos_token_id if bos is True else (None if bos is False else int(bos))
    if ctx_len < (2 if bos_id is not None else 1):
        raise ValueError(f"ctx_len {ctx_len} is too short; give at least 2 (room for BOS and a token)")
    _check_ctx_len(model_or_tokenizer, ctx_len)
    names = sorted({d.label for d in docs}) if label_names is None else list(label_names)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({d.label for d in docs} - index.keys())
    if unknown:
        raise ValueError(f"documents have labels {unknown} that are not in label_names {names}")
    encoded = tok([d.text for d in docs], add_special_tokens=False)["input_ids"]
    labels = [index[d.label] for d in docs]
    layout = _pack if pack else _one_per_doc
    rows = layout(encoded, labels, ctx_len, bos_id, max_contexts)
    if not rows:
        raise ValueError("the documents produced no tokens")
    pad_id = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
    arrays = _to_arrays(rows, ctx_len, pad_id)
    meta = {"tokenizer_hash": tokenizer_hash(tok), "ctx_len": ctx_len, "pack": pack, "bos_id": bos_id}
    return TokenDataset(**arrays, label_names=names, doc_keys=[d.id for d in docs], meta=meta)


def _check_ctx_len(model_or_tokenizer, ctx_len: int) -> None:
    hf = getattr(model_or_tokenizer, "hf", None)
    limit = getattr(getattr(hf, "config", None), "max_position_embeddings", None)
    if limit is not None and ctx_len > limit:
        raise ValueError(f"ctx_len {ctx_len} exceeds the model's {limit} positions")


# A context is built as a list of segments: (token ids, label, doc id, first position), label -1 for BOS.
Segment = tuple[Sequence[int], int, int, int]


def _pack(encoded, labels, ctx_len: int, bos_id: int | None, max_contexts: int | None) -> list[list[Segment]]:
    bos = [] if bos_id is None else [([bos_id], -1, -1, -1)]
    rows: list[list[Segment]] = []
    row, used = list(bos), len(bos)
    for doc, (ids, label) in enumerate(zip(encoded, labels)):
        if bos and used > 1:  # a document that does not open the context needs a BOS before it
            if used + 2 > ctx_len:  # no room for BOS and a token: pad out this context instead
                rows.append(row)
                row, used = list(bos), 1
            else:
                row.append(bos[0])
                used += 1
        start = 0
        while start < len(ids):
            if used == ctx_len:
                rows.append(row)
                row, used = list(bos), len(bos)
            take = min(ctx_len - used, len(ids) - start)
            row.append((ids[start : start + take], label, doc, start))
            used, start = used + take, start + take
        if max_contexts is not None and len(rows) >= max_contexts:
            return rows[:max_contexts]
    if used > len(bos):
        rows.append(row)
    return rows if max_contexts is None else rows[:max_contexts]


def _one_per_doc(encoded, labels, ctx_len: int, bos_id: int | None, max_contexts: int | None):
    bos = [] if bos_id is None else [([bos_id], -1, -1, -1)]
    rows = [
        [*bos, (ids[: ctx_len - len(bos)], label, doc, 0)]
        for doc, (ids, label) in enumerate(zip(encoded, labels))
        if ids
    ]
    return rows if max_contexts is None else rows[:max_contexts]


def _to_arrays(rows: list[list[Segment]], ctx_len: int, pad_id: int) -> dict[str, Tensor]:
    n = len(rows)
    out = {name: np.full((n, ctx_len), -1, dtype=np.int64) for name in ("labels", "doc_ids", "positions")}
    out["tokens"] = np.full((n, ctx_len), pad_id, dtype=np.int64)
    out["attention_mask"] = np.zeros((n, ctx_len), dtype=np.int64)
    for i, row in enumerate(rows):
        j = 0
        for ids, label, doc, first in row:
            k = j + len(ids)
            out["tokens"][i, j:k] = ids
            out["attention_mask"][i, j:k] = 1
            if label >= 0:
                out["labels"][i, j:k] = label
                out["doc_ids"][i, j:k] = doc
                out["positions"][i, j:k] = np.arange(first, first + len(ids))
            j = k
    return {name: torch.from_numpy(a) for name, a in out.items()}


__all__ = ["TokenDataset", "tokenize_corpus", "tokenizer_hash", "tokenizer_of"]
