"""Real text for the lens and the key-value memories, as token datasets (lmscope.data.tokens).

The documents come from a corpus folder (``lmscope corpus build``; lmscope.data.corpus): the one given,
else the default corpus when it has been built. Without any, they come from the Python standard library's
own source files, split into train/test by a hash of the file name, so that something real is always there.
"""

from __future__ import annotations

import random
import sysconfig
import zlib
from pathlib import Path

from torch import Tensor

from ..data.corpus import DOCS_FILE, default_corpus_dir, load_corpus
from ..data.document import SPLITS, Document
from ..data.tokens import TokenDataset, tokenize_corpus


def text_dataset(
    model, n_tokens: int, *, split: str = "train", ctx_len: int = 128, corpus=None, seed: int = 0
) -> TokenDataset:
    """About ``n_tokens`` tokens of real text, packed into ceil(n_tokens / ctx_len) contexts (fewer when the
    text runs out; the last may be padded). ``corpus``: a corpus folder, whose ``split`` documents are used;
    None = the default corpus if built, else Python standard library files. ``seed`` picks which documents.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n_tokens < 1 or ctx_len < 2:
        raise ValueError(f"need n_tokens >= 1 and ctx_len >= 2, got {n_tokens} and {ctx_len}")
    n_ctx = -(-n_tokens // ctx_len)
    corpus = corpus if corpus is not None else _default_corpus()
    docs = load_corpus(corpus, split=split) if corpus is not None else _stdlib_documents(split)
    if not docs:
        raise ValueError(f"no documents for split {split!r} in {describe_source(corpus)}")
    random.Random(seed).shuffle(docs)
    budget, chars = n_tokens * 8, 0  # text enough for n_tokens even at 8 characters a token; no more
    for i, doc in enumerate(docs):
        chars += len(doc.text)
        if chars >= budget:
            docs = docs[: i + 1]
            break
    return tokenize_corpus(model, docs, ctx_len=ctx_len, pack=True, bos=True, max_contexts=n_ctx)


def text_contexts(
    model, n_tokens: int, *, split: str = "train", ctx_len: int = 128, corpus=None, seed: int = 0
) -> Tensor:
    """text_dataset's full (unpadded) contexts: token ids [n_ctx, ctx_len], BOS first."""
    dataset = text_dataset(model, n_tokens, split=split, ctx_len=ctx_len, corpus=corpus, seed=seed)
    return dataset.tokens[dataset.attention_mask.bool().all(1)]


def describe_source(corpus=None) -> str:
    """Where text_dataset(corpus=corpus) takes its text from, in words."""
    corpus = corpus if corpus is not None else _default_corpus()
    return f"the corpus at {corpus}" if corpus is not None else "Python standard library source files"


def _default_corpus() -> Path | None:
    folder = default_corpus_dir()
    return folder if (folder / DOCS_FILE).is_file() else None


def _stdlib_documents(split: str, max_chars: int = 8000) -> list[Document]:
    """The stdlib's .py files whose name hash puts them in ``split`` (one in five are test)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}  # not the stdlib proper
    docs = []
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root))
        if skip & set(path.relative_to(root).parts) or (zlib.crc32(name.encode()) % 5 == 0) != (
            split == "test"
        ):
            continue
        try:
            text = path.read_text(encoding="utf-8")[:max_chars]
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) > 200:  # skip near-empty __init__ files
            docs.append(Document(text, "python", f"python:{path}", f"python/{name}", split))
    return docs
