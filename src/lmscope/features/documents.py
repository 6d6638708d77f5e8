"""Plumbing shared by `lmscope probe` and `lmscope neurons`: corpus splits as token datasets, the features
probed (one per label, plus code vs prose), and per-document activations cached in the run folder."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.corpus import build_corpus, default_corpus_dir, load_corpus
from ..data.sources import CODE_LANGUAGES
from ..data.tokens import TokenDataset, tokenize_corpus
from ..runs import write_atomic
from .collect import DocumentMeans, document_means

CODE_FEATURE = "code"


def corpus_splits(
    model,
    corpus: str | Path | None = None,
    labels: Sequence[str] | None = None,
    n_train: int = 150,
    n_test: int = 50,
    ctx_len: int = 128,
) -> tuple[TokenDataset, TokenDataset, Path]:
    """Train and test token datasets, one context per document (its first ctx_len tokens), at most n_train
    / n_test documents per label. corpus None = the default corpus, built here if it is missing.
    Returns (train, test, corpus path)."""
    path = default_corpus_dir() if corpus is None else Path(corpus)
    if corpus is None and not (path / "docs.jsonl").is_file():
        print(f"no corpus at {path}: building it (lmscope corpus build)", file=sys.stderr)
        build_corpus(path, labels=labels)
    split_docs = {}
    for split, cap in (("train", n_train), ("test", n_test)):
        docs = load_corpus(path, split=split, labels=labels)
        per_label: dict[str, list] = {}
        for doc in docs:  # the corpus is in a seeded order: the first n of each label are a random sample
            if len(per_label.setdefault(doc.label, [])) < cap:
                per_label[doc.label].append(doc)
        split_docs[split] = [d for ds in per_label.values() for d in ds]
    names = sorted({d.label for docs in split_docs.values() for d in docs})
    if len(names) < 2:
        raise ValueError(
            f"the corpus at {path} has documents of {names} only; probing needs two labels or more"
        )
    for split, docs in split_docs.items():
        missing = sorted(set(names) - {d.label for d in docs})
        if missing:
            raise ValueError(f"the {split} split of {path} has no documents labelled {missing}")
    train, test = (
        tokenize_corpus(model, split_docs[s], ctx_len=ctx_len, pack=False, label_names=names)
        for s in ("train", "test")
    )
    return train, test, path


def features_of(label_names: Sequence[str]) -> dict[str, list[str]]:
    """Feature name -> the labels that make it present: each label against the rest, and "code" (every
    programming-language label) when the corpus has prose and two or more code languages."""
    features = {name: [name] for name in label_names}
    code = [n for n in label_names if n in CODE_LANGUAGES]
    if len(code) >= 2 and len(code) < len(label_names) and CODE_FEATURE not in features:
        features[CODE_FEATURE] = code
    return features


def targets(doc: DocumentMeans, features: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Feature name -> y [n_docs] bool."""
    index = {name: i for i, name in enumerate(doc.label_names)}
    return {
        f: torch.isin(doc.labels, torch.tensor([index[n] for n in names])) for f, names in features.items()
    }


def cached_document_means(
    model,
    dataset: TokenDataset,
    sites: list[str],
    path: Path,
    sample_tokens: int = 0,
    progress: bool = True,
    reuse: Path | None = None,
) -> DocumentMeans:
    """document_means, saved to `path` (safetensors) and reused when the model, dataset and sites match
    (and it holds at least `sample_tokens` sampled tokens): a rerun into the same folder skips the
    expensive pass. `reuse`: another saved file to try first (e.g. the same split of a probe run)."""
    from safetensors.torch import save

    key = json.dumps([model.cfg.name, model.cfg.n_layers, dataset.fingerprint(), list(sites)])
    for candidate in (reuse, path):
        doc = _load_means(candidate, key, sites, sample_tokens) if candidate is not None else None
        if doc is not None:
            if candidate != path:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, Path(candidate).read_bytes())
            return doc
    doc = document_means(model, dataset, sites, sample_tokens=sample_tokens, progress=progress)
    # The token sample only feeds kurtosis statistics: kept in half precision (half the file), and
    # rounded the same way here so a fresh run and a cached rerun give the same numbers.
    doc.sample = {s: t.half().float() for s, t in doc.sample.items()}
    tensors = {
        "means": doc.means.contiguous(),
        "doc_index": doc.doc_index,
        "labels": doc.labels,
        "n_tokens": doc.n_tokens,
        **{f"sample/{s}": t.half().contiguous() for s, t in doc.sample.items()},
    }
    meta = {"key": key, "label_names": json.dumps(doc.label_names), "sample_tokens": str(sample_tokens)}
    write_atomic(path, save(tensors, metadata=meta))
    return doc


def _load_means(path: Path, key: str, sites: list[str], sample_tokens: int) -> DocumentMeans | None:
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("key") != key or int(meta.get("sample_tokens", 0)) < sample_tokens:
            return None
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    sample = {s: tensors[f"sample/{s}"].float() for s in sites if f"sample/{s}" in tensors}
    names = json.loads(meta["label_names"])
    means = (tensors["means"], tensors["doc_index"], tensors["labels"], tensors["n_tokens"])
    return DocumentMeans(*means, names, list(sites), sample)
