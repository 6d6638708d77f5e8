"""The activation store: activations of chosen sites over a token dataset, in sharded safetensors files.

    store = harvest(model, dataset, ["blocks.*.mlp.post"], "store/", dtype="float16")
    x = store.read("blocks.3.mlp.post", 0, 1000)             # [1000, d_mlp], memory-mapped
    for batch in store.batches("blocks.3.mlp.post", 4096):   # shuffled across shards, constant memory
        ...

Layout of a store folder::

    manifest.json                           model, sites, dtype, d per site, shards done, hashes
    tokens/shard_00000.safetensors          tokens, labels, doc_ids, positions of the shard's tokens, each [n]
    blocks.3.mlp.post/shard_00000.safetensors   "acts" [n, d] (an ordinary safetensors file)
    report.html, run.json                   written when the harvest is complete (kind "store")

Only real (unpadded) tokens are stored, BOS included, in dataset order; shard i holds tokens
[i * shard_tokens, (i + 1) * shard_tokens). A shard file is written under a temporary name and renamed, and
the manifest is rewritten after each shard, so a harvest can be killed at any point and resumed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..model.loading import _dtype as as_torch_dtype
from ..runs import read_json, write_atomic, write_json, write_run
from .shardio import RowWriter
from .store_reader import FORMAT, MANIFEST, TOKEN_FIELDS, TOKENS, ActivationStore, shard_path
from .tokens import TokenDataset, tokenizer_hash


@dataclass
class HarvestOptions:
    """What `lmscope harvest` sets (harvest_corpus's and harvest's defaults are these)."""

    sites: list[str] = field(
        metadata={"sep": ",", "help": "comma-separated names or globs, e.g. 'blocks.*.mlp.post'"}
    )
    corpus: str | None = field(
        default=None, metadata={"help": "corpus folder (default: <cache>/corpora/default)"}
    )
    split: str = field(default="train", metadata={"choices": ("train", "test", "all")})
    labels: list[str] | None = field(
        default=None, metadata={"sep": ",", "help": "labels to keep (default: all)"}
    )
    ctx_len: int = field(default=128, metadata={"help": "tokens per context"})
    max_contexts: int | None = field(default=None, metadata={"help": "stop after this many contexts"})
    dtype: str = field(default="float32", metadata={"choices": ("float32", "float16", "bfloat16")})
    batch_size: int = 16
    shard_tokens: int = 65536
    resume: bool = field(
        default=True, metadata={"flag": "--restart", "help": "start over instead of resuming --out"}
    )
    out: str | None = field(default=None, metadata={"help": "store folder (default: <cache>/stores/default)"})


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# Settings that must match for a harvest to resume into an existing folder.
_RESUME_KEYS = ("model", "sites", "dtype", "dataset_hash", "tokenizer_hash", "shard_tokens", "batch_size")


def harvest(
    model,
    dataset: TokenDataset,
    sites: str | Iterable[str],
    out_dir: str | os.PathLike,
    dtype: str | torch.dtype = HarvestOptions.dtype,
    batch_size: int = HarvestOptions.batch_size,
    shard_tokens: int = HarvestOptions.shard_tokens,
    resume: bool = HarvestOptions.resume,
    *,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> ActivationStore:
    """Run `model` over `dataset` and store the activations of `sites` (names or globs) in `out_dir`.

    The forward stops right after the last requested site. Rows are written to disk as they come (by a
    background thread, while the next batch runs), so memory holds two batches' activations at most,
    whatever the dataset's size. resume=True continues a folder holding an
    unfinished harvest of the same model, sites, dtype and dataset (an error if any differs); resume=False
    starts over. on_shard(i) is called after shard i is in place. Returns the store.
    """
    out = Path(out_dir)
    names = model.resolve_sites(sites)
    if not names:
        raise ValueError(f"no sites match {sites!r}")
    if any(n.endswith("attn.pattern") for n in names):
        raise ValueError(
            "attn.pattern is per query and key, not per token, so it cannot be stored; store attn.z"
        )
    torch_dtype = as_torch_dtype(dtype)
    if torch_dtype not in _DTYPE_NAMES:
        raise ValueError(f"store dtype must be float32, float16 or bfloat16, got {dtype}")
    if batch_size < 1 or shard_tokens < 1:
        raise ValueError(f"batch_size and shard_tokens must be positive, got {batch_size} and {shard_tokens}")
    counts = dataset.attention_mask.sum(1)  # real tokens per context
    ends = torch.cumsum(counts, 0)  # [n_ctx]: real tokens in contexts 0..i
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        raise ValueError("the dataset has no tokens")
    fresh = {
        "format": FORMAT,
        "version": 1,
        "model": model.cfg.name,
        "sites": names,
        "dtype": _DTYPE_NAMES[torch_dtype],
        "dataset_hash": dataset.fingerprint(),
        "tokenizer_hash": tokenizer_hash(model) if model.tokenizer is not None else "",
        "shard_tokens": shard_tokens,
        "batch_size": batch_size,
        "ctx_len": dataset.ctx_len,
        "label_names": list(dataset.label_names),
        "total_tokens": total,
        "n_shards_total": -(-total // shard_tokens),
        "d": {},
        "row_shape": {},
        "shards": [],
        "complete": False,
    }
    manifest = _start(out, fresh, resume)
    done = len(manifest["shards"])
    if done < manifest["n_shards_total"]:
        _run(model, dataset, manifest, out, torch_dtype, ends, progress, on_shard)
    if not manifest["complete"]:
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
    store = ActivationStore(out)
    from .store_report import store_report

    store_report(store, out / "report.html")
    write_run(
        out,
        "store",
        f"Activations: {len(names)} sites, {total} tokens",
        model=model.cfg.name,
        sites=names,
        n_tokens=total,
        dtype=manifest["dtype"],
    )
    return store


def harvest_corpus(
    model,
    sites: str | Iterable[str],
    out_dir: str | os.PathLike,
    corpus: str | os.PathLike | None = None,
    split: str | None = HarvestOptions.split,
    labels: Iterable[str] | None = None,
    ctx_len: int = HarvestOptions.ctx_len,
    max_contexts: int | None = None,
    **harvest_kwargs,
) -> ActivationStore:
    """Tokenise a corpus folder (default: the default corpus) and harvest it: what `lmscope harvest` runs.

    The label order is the corpus's full label list, so stores of different splits index labels alike.
    """
    from .corpus import load_corpus
    from .tokens import tokenize_corpus

    names = sorted({d.label for d in load_corpus(corpus)})
    docs = load_corpus(corpus, split=split, labels=None if labels is None else list(labels))
    if not docs:
        raise ValueError(f"the corpus has no documents in split {split!r}")
    dataset = tokenize_corpus(model, docs, ctx_len=ctx_len, label_names=names, max_contexts=max_contexts)
    return harvest(model, dataset, sites, out_dir, **harvest_kwargs)


def _start(out: Path, fresh: dict, resume: bool) -> dict:
    """The manifest to continue from: the existing one when resuming a matching harvest, else `fresh`."""
    path = out / MANIFEST
    for folder in [*fresh["sites"], TOKENS]:  # partial files of a killed run
        for tmp in (out / folder).glob(".shard_*.tmp"):
            tmp.unlink(missing_ok=True)
    if path.is_file():
        old = read_json(path)
        if old.get("format") != FORMAT:
            raise ValueError(f"{path} exists and is not an activation-store manifest; choose another folder")
        if resume:
            differ = [k for k in _RESUME_KEYS if old.get(k) != fresh[k]]
            if differ:
                raise ValueError(
                    f"{out} holds a harvest with other {', '.join(differ)}; pass resume=False to overwrite it, "
                    "or choose another folder"
                )
            return old
        for site in [*old["sites"], TOKENS]:  # starting over: remove the old shards
            for i in range(old.get("n_shards_total", len(old["shards"]))):
                shard_path(out, site, i).unlink(missing_ok=True)
        (out / "run.json").unlink(missing_ok=True)
    write_json(path, fresh)
    return fresh


def _run(model, dataset, manifest, out, dtype, ends, progress, on_shard) -> None:
    """Harvest the shards not yet in `manifest`, updating it (and the file) after each."""
    from tqdm.auto import tqdm

    B, names = manifest["batch_size"], manifest["sites"]
    first_token = len(manifest["shards"]) * manifest["shard_tokens"]
    # Batches always cover the same contexts (a fixed grid of B), so a resumed run computes exactly what an
    # uninterrupted one would, bit for bit; rows before first_token in the first batch are dropped.
    first_ctx = int(torch.searchsorted(ends, first_token, right=True))
    b0 = first_ctx // B * B
    skip = first_token - (int(ends[b0 - 1]) if b0 else 0)
    sink = _ShardSink(out, manifest, dtype, on_shard)
    bar = tqdm(
        total=manifest["total_tokens"], initial=first_token, unit="tok", desc="harvest", disable=not progress
    )
    try:
        for start in range(b0, len(dataset), B):
            batch = dataset[start : start + B]
            mask = batch.attention_mask.bool()
            with torch.no_grad():
                _, cache = model.run_with_cache(
                    batch.tokens, names, attention_mask=batch.attention_mask, stop_at=names[-1]
                )
            if not manifest["d"]:  # the first batch tells each site's row shape
                manifest["row_shape"] = {n: list(cache[n].shape[2:]) for n in names}
                manifest["d"] = {n: int(np.prod(cache[n].shape[2:])) for n in names}
            full = bool(mask.all())  # packed contexts: every token is real, so rows are a view, not a copy
            rows = {n: (cache[n] if full else cache[n][mask]).reshape(-1, manifest["d"][n]) for n in names}
            tok = torch.stack([getattr(batch, f)[mask] for f in TOKEN_FIELDS], 1)
            sink.add({n: r[skip:].to(dtype) for n, r in rows.items()}, tok[skip:])
            bar.update(len(tok) - skip)
            skip = 0
    finally:
        bar.close()
        sink.close()


class _ShardSink:
    """Takes rows in dataset order and lays them into shards; files are written by one background thread
    (the writes overlap the next forward) with at most two batches in flight, so memory stays flat."""

    def __init__(self, out: Path, manifest: dict, dtype: torch.dtype, on_shard):
        self.out, self.manifest, self.dtype, self.on_shard = out, manifest, dtype, on_shard
        self.shard = len(manifest["shards"])
        self.writers: dict[str, RowWriter] = {}
        self.filled = 0
        self.info: list[Tensor] = []  # token info [k, 4] of the current shard
        self.stats = _Stats(manifest["sites"])
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lmscope-harvest")
        self.pending: deque[Future] = deque()

    def add(self, rows: dict[str, Tensor], tok: Tensor) -> None:
        S, total = self.manifest["shard_tokens"], self.manifest["total_tokens"]
        at = 0
        while at < len(tok):
            n_rows = min(S, total - self.shard * S)
            if not self.writers:
                self.writers = {
                    n: RowWriter(shard_path(self.out, n, self.shard), n_rows, r.shape[1:], self.dtype)
                    for n, r in rows.items()
                }
            take = min(len(tok) - at, n_rows - self.filled)
            chunk = {n: r[at : at + take] for n, r in rows.items()}
            self._submit(self.writers, chunk)
            self.stats.add(chunk)
            self.info.append(tok[at : at + take])
            self.filled += take
            at += take
            if self.filled == n_rows:
                self._finish()

    def _submit(self, writers: dict[str, RowWriter], chunk: dict[str, Tensor]) -> None:
        while self.pending:  # one write in flight: it overlaps the next forward, memory stays at two batches
            self.pending.popleft().result()  # re-raises a failed write here
        self.pending.append(self.pool.submit(lambda: [writers[n].write(x) for n, x in chunk.items()]))

    def _drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def _finish(self) -> None:
        """Rename the shard's files into place, then record it in the manifest (so it counts as done)."""
        from safetensors.torch import save

        self._drain()
        info = torch.cat(self.info)
        tensors = {f: info[:, j].contiguous() for j, f in enumerate(TOKEN_FIELDS)}
        write_atomic(shard_path(self.out, TOKENS, self.shard), save(tensors))
        for w in self.writers.values():
            w.close()
        start = self.shard * self.manifest["shard_tokens"]
        record = {"index": self.shard, "start": start, "stop": start + len(info), "stats": self.stats.pop()}
        self.manifest["shards"].append(record)
        write_json(self.out / MANIFEST, self.manifest)
        self.writers, self.filled, self.info = {}, 0, []
        self.shard += 1
        if self.on_shard is not None:
            self.on_shard(self.shard - 1)

    def close(self) -> None:
        """Wait for the writes; drop the files of an unfinished shard (an interrupted run)."""
        try:
            self._drain()
        finally:
            self.pool.shutdown()
            for w in self.writers.values():
                w.abort()


class _Stats:
    """Per-site means over one shard, for the report: row norm, value, fraction of positive values.

    Computed on every 8th row: enough for a report, and it keeps the cost out of the harvest's throughput.
    """

    def __init__(self, names):
        self.names = names
        self.sums = {n: torch.zeros(3, dtype=torch.float64) for n in names}
        self.rows = 0

    def add(self, chunk: dict[str, Tensor]) -> None:
        for name, rows in chunk.items():
            x = rows[::8].float()
            sums = torch.stack([x.norm(dim=1).sum(), x.mean(1).sum(), (x > 0).float().mean(1).sum()])
            self.sums[name] += sums.double()
            n = len(x)
        self.rows += n

    def pop(self) -> dict:
        n = max(self.rows, 1)
        out = {s: dict(zip(("norm", "mean", "frac_pos"), (v / n).tolist())) for s, v in self.sums.items()}
        self.__init__(self.names)
        return out


__all__ = ["ActivationStore", "harvest", "harvest_corpus"]
