"""Reading an activation store: memory-mapped rows, token info, shuffled batches in constant memory.

The folder layout is described in :mod:`lmscope.data.store`, which writes it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..model.loading import _dtype as as_torch_dtype
from ..runs import read_json
from .shardio import map_rows

MANIFEST = "manifest.json"
FORMAT = "lmscope-activation-store"
TOKENS = "tokens"
TOKEN_FIELDS = ("tokens", "labels", "doc_ids", "positions")


def shard_path(root: str | os.PathLike, folder: str, index: int) -> Path:
    """The file of shard `index` of a site (or of the token info, folder "tokens")."""
    return Path(root) / folder / f"shard_{index:05d}.safetensors"


class ActivationStore:
    """A (possibly still growing) store folder written by :func:`harvest`. Only completed shards are seen."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise FileNotFoundError(
                f"no activation store at {self.path} (no {MANIFEST}); make one with harvest()"
            )
        self.manifest: dict = read_json(self.path / MANIFEST)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{self.path / MANIFEST} is not an activation-store manifest")
        self.sites: list[str] = list(self.manifest["sites"])
        self.dtype: torch.dtype = as_torch_dtype(self.manifest["dtype"])
        self._bounds = np.array([0] + [s["stop"] for s in self.manifest["shards"]], dtype=np.int64)
        self._maps: dict[tuple[str, int], Tensor] = {}

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}: {self.n_tokens} tokens, {len(self.sites)} sites, {self.manifest['dtype']})"

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def n_tokens(self) -> int:
        return int(self._bounds[-1])

    @property
    def n_shards(self) -> int:
        return len(self._bounds) - 1

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.get("label_names", []))

    def d(self, site: str) -> int:
        """Width of a stored row of `site` (heads x d_head flattened for attn.q/k/v/z)."""
        self._check_site(site)
        return int(self.manifest["d"][site])

    def _check_site(self, site: str) -> None:
        if site not in self.sites:
            raise KeyError(f"site {site!r} is not in this store; it has {', '.join(self.sites)}")

    def _shard(self, site: str, index: int) -> Tensor:
        """Shard `index` of `site`, memory-mapped [n, d]. A few hundred maps are kept open at most."""
        key = (site, index)
        if key not in self._maps:
            if len(self._maps) >= 256:
                self._maps.pop(next(iter(self._maps)))
            self._maps[key] = map_rows(shard_path(self.path, site, index))
        return self._maps[key]

    def read(self, site: str, start: int = 0, stop: int | None = None) -> Tensor:
        """Rows start..stop of `site` [n, d]: a memory-mapped view within one shard, else a copy of the rows."""
        self._check_site(site)
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        if not 0 <= start <= stop:
            raise IndexError(f"rows {start}..{stop} are outside 0..{self.n_tokens}")
        first = int(np.searchsorted(self._bounds, start, side="right")) - 1
        parts = []
        for i in range(max(first, 0), self.n_shards):
            lo, hi = self._bounds[i], self._bounds[i + 1]
            if lo >= stop:
                break
            parts.append(self._shard(site, i)[max(start, lo) - lo : min(stop, hi) - lo])
        if not parts:
            return torch.empty(0, self.d(site), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def token_info(self) -> dict[str, Tensor]:
        """tokens, labels (index into label_names, -1 = BOS), doc_ids, positions of every stored row, each [n]."""
        from safetensors.torch import load_file

        shards = [load_file(shard_path(self.path, TOKENS, i)) for i in range(self.n_shards)]
        if not shards:
            return {name: torch.empty(0, dtype=torch.int64) for name in TOKEN_FIELDS}
        return {name: torch.cat([s[name] for s in shards]) for name in TOKEN_FIELDS}

    def batches(
        self,
        site: str,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        *,
        window_shards: int = 8,
        dtype: torch.dtype | str | None = None,
        return_ids: bool = False,
    ) -> Iterator[Tensor] | Iterator[tuple[Tensor, Tensor]]:
        """One epoch of [batch_size, d] batches; every row once (but a dropped last partial batch).

        shuffle: shards are taken in a seeded random order, `window_shards` at a time, and the rows of each
        window are permuted together; so memory stays bounded by the window whatever the store's size (the
        whole store is one window when it has at most `window_shards` shards). Use seed=epoch for a new order.
        dtype: convert batches (e.g. "float32" to train on a float16 store).
        return_ids: yield (batch, row ids [batch]) instead; the ids index token_info() and read().
        """
        self._check_site(site)
        if batch_size < 1 or window_shards < 1:
            raise ValueError(
                f"batch_size and window_shards must be at least 1, got {batch_size}, {window_shards}"
            )
        to = None if dtype is None else as_torch_dtype(dtype)
        pending: list[Tensor] = []  # row ids not yet batched, carried over window edges
        for rows in self._row_order(shuffle, seed, window_shards):
            pending.append(rows)
            waiting = sum(len(p) for p in pending)
            if waiting < batch_size:
                continue
            ids = torch.cat(pending)
            full = waiting - waiting % batch_size
            for i in range(0, full, batch_size):
                yield self._gather(site, ids[i : i + batch_size], to, return_ids)
            pending = [ids[full:]]
        rest = torch.cat(pending) if pending else torch.empty(0, dtype=torch.int64)
        if len(rest) and not drop_last:
            yield self._gather(site, rest, to, return_ids)

    def _row_order(self, shuffle: bool, seed: int, window_shards: int) -> Iterator[Tensor]:
        """Global row ids, a window of shards at a time (shuffled within each window when asked)."""
        order = list(range(self.n_shards))
        gen = torch.Generator().manual_seed(seed)
        if shuffle:
            random.Random(seed).shuffle(order)
        for w in range(0, len(order), window_shards):
            ids = torch.cat(
                [
                    torch.arange(int(self._bounds[i]), int(self._bounds[i + 1]))
                    for i in order[w : w + window_shards]
                ]
            )
            yield ids[torch.randperm(len(ids), generator=gen)] if shuffle else ids

    def _gather(self, site: str, ids: Tensor, dtype: torch.dtype | None, return_ids: bool = False):
        """Rows `ids` [n] of `site` -> [n, d], read shard by shard from the maps (in the order of ids)."""
        shard_of = torch.from_numpy(np.searchsorted(self._bounds, ids.numpy(), side="right") - 1)
        out = torch.empty(len(ids), self.d(site), dtype=self.dtype)
        for i in torch.unique(shard_of).tolist():
            where = (shard_of == i).nonzero().squeeze(1)
            out[where] = self._shard(site, i)[ids[where] - int(self._bounds[i])]
        out = out if dtype is None else out.to(dtype)
        return (out, ids) if return_ids else out
