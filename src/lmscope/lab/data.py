"""The lab's data: a tokenizer (full or trimmed), train and held-out TokenDatasets, batches, the unigram baseline.

Targets: every next-token prediction whose target is a document token (not BOS, not padding); the training
loss, the held-out loss and the unigram baseline all average over the same kind of targets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from ..data.tokens import TokenDataset, tokenize_corpus, tokenizer_hash
from .config import LabConfig
from .vocab import count_tokens, trim_tokenizer

# Krichevsky-Trofimov (add-1/2) smoothing: unseen tokens get some mass, without the add-one estimator's
# heavy penalty on a 49k-token vocabulary.
UNIGRAM_ALPHA = 0.5


def base_tokenizer(tokenizer=None):
    """A tokenizer object: `tokenizer` itself, one loaded from a folder, or (None) SmolLM2's."""
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    if tokenizer is None:
        from ..model.loading import bundled_gguf, converted_folder

        tokenizer = converted_folder(bundled_gguf())
    if not Path(tokenizer).is_dir():
        raise FileNotFoundError(
            f"no tokenizer folder at {tokenizer}; give a folder with a Hugging Face tokenizer"
        )
    return AutoTokenizer.from_pretrained(str(tokenizer))


def corpus_docs(corpus, split: str, max_tokens: int | None, tokenizer) -> list:
    """The split's documents, only as many (in corpus order) as give `max_tokens` tokens under `tokenizer`."""
    from ..data.corpus import load_corpus

    docs = load_corpus(corpus, split=split)
    if not docs:
        raise ValueError(
            f"the corpus at {corpus} has no {split!r} documents; build it with a test fraction > 0"
        )
    if max_tokens is None:
        return docs
    total, kept = 0, []
    for i in range(0, len(docs), 64):
        chunk = docs[i : i + 64]
        lengths = [
            len(ids) for ids in tokenizer([d.text for d in chunk], add_special_tokens=False)["input_ids"]
        ]
        for doc, n in zip(chunk, lengths):
            kept.append(doc)
            total += n + 1  # + BOS
            if total >= max_tokens:
                return kept
    return kept


def build_tokenizer(cfg: LabConfig, base, train_docs) -> tuple[object, list[int] | None]:
    """(tokenizer, id_map): the base tokenizer (vocab 0) or one trimmed to cfg.vocab on the train docs."""
    if cfg.vocab == 0:
        return base, None
    if cfg.vocab >= len(base):
        raise ValueError(
            f"vocab {cfg.vocab} is not smaller than the tokenizer's {len(base)}; give 0 to keep it whole"
        )
    counts = count_tokens(base, [d.text for d in train_docs])
    return trim_tokenizer(base, counts, cfg.vocab)


def corpus_datasets(cfg: LabConfig, corpus, tokenizer) -> tuple[TokenDataset, TokenDataset]:
    """(train, test) TokenDatasets of `corpus` under `tokenizer`: train limited to cfg.train_tokens (error
    when the corpus has fewer), test to cfg.eval_tokens."""
    train_docs = corpus_docs(
        corpus, "train", None if cfg.train_tokens is None else 2 * cfg.train_tokens, tokenizer
    )
    n_train = None if cfg.train_tokens is None else math.ceil(cfg.train_tokens / cfg.ctx_len)
    train = tokenize_corpus(
        tokenizer, train_docs, cfg.ctx_len, label_names=_label_names(corpus), max_contexts=n_train
    )
    if n_train is not None and len(train) < n_train:  # (contexts, not tokens: a context may end in a pad)
        raise ValueError(
            f"the corpus at {corpus or 'the default place'} has {train.n_tokens} train tokens, fewer than train_tokens "
            f"{cfg.train_tokens}; build a bigger corpus (lmscope corpus build --max-docs N) or lower --train-tokens"
        )
    return train, heldout_dataset(cfg, corpus, tokenizer)


def heldout_dataset(cfg: LabConfig, corpus, tokenizer) -> TokenDataset:
    """The corpus's test split under `tokenizer`, cfg.eval_tokens tokens (in cfg.ctx_len contexts)."""
    docs = corpus_docs(corpus, "test", 2 * cfg.eval_tokens, tokenizer)
    n_ctx = math.ceil(cfg.eval_tokens / cfg.ctx_len)
    return tokenize_corpus(tokenizer, docs, cfg.ctx_len, label_names=_label_names(corpus), max_contexts=n_ctx)


def _label_names(corpus) -> list[str]:
    from ..data.corpus import load_corpus

    return sorted({d.label for d in load_corpus(corpus)})


def check_dataset(ds: TokenDataset, tokenizer, name: str) -> None:
    """A dataset made with another tokenizer (or ids past the vocabulary) cannot train this model."""
    expected = tokenizer_hash(tokenizer)
    made_with = ds.meta.get("tokenizer_hash")
    if made_with is not None and made_with != expected:
        raise ValueError(
            f"the {name} dataset was tokenised with another tokenizer (hash {made_with[:12]}, this one "
            f"{expected[:12]}); tokenise it with the tokenizer the model is trained with"
        )
    top = int(ds.tokens.max()) if ds.tokens.numel() else -1
    if top >= len(tokenizer):
        raise ValueError(f"the {name} dataset has token id {top}, past the vocabulary of {len(tokenizer)}")
    if not bool(target_mask(ds).any()):
        raise ValueError(f"the {name} dataset has no tokens to predict")


def target_mask(ds: TokenDataset) -> Tensor:
    """[n_ctx, ctx_len - 1] bool: which next-token targets count (document tokens, not BOS or padding)."""
    return (ds.attention_mask[:, 1:] == 1) & (ds.labels[:, 1:] >= 0)


def unigram_loss(
    train: TokenDataset, test: TokenDataset, vocab_size: int, alpha: float = UNIGRAM_ALPHA
) -> float:
    """Cross-entropy (nats/token) of the test targets under the train targets' unigram distribution,
    add-`alpha` smoothed over `vocab_size` tokens: the loss of a model that ignores context."""
    train_targets = train.tokens[:, 1:][target_mask(train)]
    counts = torch.bincount(train_targets, minlength=vocab_size).double() + alpha
    log_p = counts.log() - counts.sum().log()
    test_targets = test.tokens[:, 1:][target_mask(test)]
    return float(-log_p[test_targets].mean())


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """The contexts of `step`: consecutive slices of one seeded permutation per epoch, a function of the step
    alone (so a resumed run draws exactly the batches the uninterrupted one would)."""
    parts, start = [], step * batch_size
    while sum(len(p) for p in parts) < batch_size:
        epoch, offset = divmod(start + sum(len(p) for p in parts), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        parts.append(perm[offset : offset + batch_size - sum(len(p) for p in parts)])
    return torch.cat(parts)
