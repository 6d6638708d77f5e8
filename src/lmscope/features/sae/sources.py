"""Where training batches come from: a tensor or an activation store, the model on the fly, or any iterator.

Every source answers ``batch(step) -> Tensor [batch_size // world, d]``: this process's share of the global
batch of optimizer step ``step``. Random access by step is what makes a resumed run identical to an
uninterrupted one. Under torchrun each process reads only its own rows.

    RowSource(x [n, d], batch_size)                     in memory, or memory-mapped from an ActivationStore
    RowSource.from_store(store, site, batch_size)       (BOS rows left out)
    ModelSource(model, dataset, site, batch_size)       runs the model up to the site, chunk by chunk
    IteratorSource(iterable of [b, d] tensors)          sequential only (resume replays it)
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import Tensor

from .distributed import all_gather_cat, world


def _generator(*seeds: int) -> torch.Generator:
    # a distinct, reproducible stream per (seed, epoch, ...) tuple
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + int(s) + 1) % (2**62)
    return torch.Generator().manual_seed(value)


class StoreRows:
    """One site of an ActivationStore as a row-indexable [n, d] array: each shard memory-mapped, rows
    gathered shard by shard (no copy of the whole site)."""

    def __init__(self, store, site: str):
        stops = [int(s["stop"]) for s in store.manifest["shards"]]
        self.bounds = torch.tensor([0, *stops])
        self.shards = [store.read(site, lo, hi) for lo, hi in zip([0, *stops[:-1]], stops)]
        self.shape = (int(self.bounds[-1]), store.d(site))

    def dim(self) -> int:
        return 2

    def __getitem__(self, rows: Tensor) -> Tensor:
        rows = torch.as_tensor(rows, dtype=torch.long)
        shard_of = torch.searchsorted(self.bounds, rows, right=True) - 1
        out = torch.empty(
            len(rows), self.shape[1], dtype=self.shards[0].dtype if self.shards else torch.float32
        )
        for i in torch.unique(shard_of).tolist():
            where = (shard_of == i).nonzero().squeeze(1)
            out[where] = self.shards[i][rows[where] - int(self.bounds[i])]
        return out


class RowSource:
    """Shuffled batches of rows of an [n, d] tensor (may be memory-mapped), a new order each epoch.

    The global batch of step s is rows perm_e[i : i + batch_size] of epoch e's permutation; process r of w
    reads the r-th of w equal slices of it, so w processes see exactly the one-process batch between them.
    rows: an optional subset of row indices to draw from (e.g. without BOS tokens).
    """

    def __init__(self, data: Tensor, batch_size: int, seed: int = 0, rows: Tensor | None = None):
        if data.dim() != 2:
            raise ValueError(f"RowSource needs activations [n, d], got shape {tuple(data.shape)}")
        self.data = data
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
        self.n = data.shape[0] if self.rows is None else len(self.rows)
        self.d = data.shape[1]
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world = world()
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} must divide evenly among {self.world} processes")
        if self.n < batch_size:
            raise ValueError(f"only {self.n} rows to draw batches of {batch_size} from; use a smaller batch")
        self.steps_per_epoch = self.n // batch_size
        self._perm: tuple[int, Tensor] | None = None

    @classmethod
    def from_store(cls, store, site: str, batch_size: int, seed: int = 0, skip_bos: bool = True) -> RowSource:
        """Batches of one site of an lmscope ActivationStore (memory-mapped; BOS rows skipped)."""
        if site not in store.sites:
            raise KeyError(f"the store has no site {site!r}; it holds {', '.join(store.sites)}")
        rows = None
        if skip_bos:
            info = store.token_info()
            keep = info["doc_ids"] >= 0  # BOS and padding carry doc id -1
            rows = keep.nonzero().squeeze(1) if not bool(keep.all()) else None
        return cls(StoreRows(store, site), batch_size, seed=seed, rows=rows)

    def _permutation(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.n, generator=_generator(self.seed, epoch)))
        return self._perm[1]

    def _read(self, index: Tensor) -> Tensor:
        rows = index if self.rows is None else self.rows[index]
        return self.data[rows].float()

    def batch(self, step: int) -> Tensor:
        epoch, within = divmod(step, self.steps_per_epoch)
        share = self.batch_size // self.world
        start = within * self.batch_size + self.rank * share
        return self._read(self._permutation(epoch)[start : start + share])

    def calibration(self, n: int) -> Tensor:
        """The same random n rows in every process [n, d] (for the norm scale and the geometric median)."""
        index = torch.randperm(self.n, generator=_generator(self.seed, -1))[: min(n, self.n)]
        return self._read(index.sort().values)


class ModelSource:
    """Activations of `site` computed on the fly: contexts of a TokenDataset, shuffled, run through the
    model (stopping at the site) chunk by chunk; each chunk's tokens are shuffled and cut into batches.

    Under torchrun each process runs its own contexts (every world-th one of the shuffled order).
    chunk_batches: batches per chunk (more = better mixing, more memory; the leftover tokens of a chunk,
    fewer than one batch, are skipped). skip_bos leaves out BOS tokens (huge norms, one per context).
    """

    def __init__(
        self,
        model,
        dataset,
        site: str,
        batch_size: int,
        seed: int = 0,
        chunk_batches: int = 8,
        model_batch: int = 16,
        skip_bos: bool = True,
    ):
        [self.site] = model.resolve_sites([site])
        self.sites = [self.site]  # what one forward caches (a subclass may read several sites at once)
        self.model, self.dataset, self.seed = model, dataset, seed
        self.model_batch, self.skip_bos = model_batch, skip_bos
        self.rank, self.world = world()
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} must divide evenly among {self.world} processes")
        self.share = batch_size // self.world
        n_ctx, ctx_len = dataset.tokens.shape
        per_ctx = max(1, int(dataset.attention_mask.sum()) // max(1, n_ctx) - int(skip_bos))
        self.chunk_contexts = max(1, -(-chunk_batches * self.share // per_ctx))
        self.chunk_contexts = min(self.chunk_contexts, n_ctx // self.world)
        if self.chunk_contexts < 1:
            raise ValueError(f"{n_ctx} contexts cannot be shared among {self.world} processes")
        self._chunks: OrderedDict[tuple[int, int], Tensor] = OrderedDict()
        self._plan: dict[int, list[tuple[int, int]]] = {}  # epoch -> [(chunk, n_batches)]

    def _contexts(self, epoch: int) -> Tensor:
        order = torch.randperm(len(self.dataset), generator=_generator(self.seed, epoch))
        mine = order[self.rank :: self.world]
        return mine[: len(mine) - len(mine) % self.chunk_contexts]

    def _real(self, index: Tensor) -> Tensor:
        mask = self.dataset.attention_mask[index].bool()
        if self.skip_bos:
            mask &= self.dataset.doc_ids[index] >= 0
        return mask

    def _epoch_plan(self, epoch: int) -> list[tuple[int, int]]:
        if epoch not in self._plan:
            contexts = self._contexts(epoch).view(-1, self.chunk_contexts)
            self._plan[epoch] = [
                (c, int(self._real(idx).sum()) // self.share) for c, idx in enumerate(contexts)
            ]
            if epoch == 1:
                warnings.warn("ModelSource: the dataset is used for more than one epoch", stacklevel=3)
        return self._plan[epoch]

    @torch.no_grad()
    def activations(self, index: Tensor) -> Tensor:
        """Activations [n_real_tokens, d] of the given contexts (real tokens only, in order)."""
        rows = []
        for i in range(0, len(index), self.model_batch):
            part = index[i : i + self.model_batch]
            _, cache = self.model.run_with_cache(
                self.dataset.tokens[part],
                sites=self.sites,
                attention_mask=self.dataset.attention_mask[part],
                stop_at=self.site,
            )
            rows.append(self._rows(cache)[self._real(part)])
        return torch.cat(rows)

    def _rows(self, cache) -> Tensor:
        """One forward's activations [b, p, d] (heads flattened into d)."""
        act = cache[self.site].float()
        return act.reshape(*act.shape[:2], -1)

    def _chunk(self, epoch: int, chunk: int) -> Tensor:
        key = (epoch, chunk)
        if key not in self._chunks:
            index = self._contexts(epoch).view(-1, self.chunk_contexts)[chunk]
            acts = self.activations(index)
            self._chunks[key] = acts[torch.randperm(len(acts), generator=_generator(self.seed, epoch, chunk))]
            while len(self._chunks) > 2:
                self._chunks.popitem(last=False)
        return self._chunks[key]

    def batch(self, step: int) -> Tensor:
        epoch, remaining = 0, step
        while True:
            plan = self._epoch_plan(epoch)
            per_epoch = sum(n for _, n in plan)
            if per_epoch == 0:
                raise ValueError("the dataset is too small for one batch per chunk; use a smaller batch")
            if remaining < per_epoch:
                break
            remaining -= per_epoch
            epoch += 1
        for chunk, n in plan:
            if remaining < n:
                return self._chunk(epoch, chunk)[remaining * self.share : (remaining + 1) * self.share]
            remaining -= n
        raise AssertionError("unreachable")

    def calibration(self, n: int) -> Tensor:
        """Activations of the first contexts of the shuffled order (the same in every process)."""
        order = torch.randperm(len(self.dataset), generator=_generator(self.seed, -1))
        per_ctx = max(1, int(self._real(order[:1]).sum()))
        return self.activations(order[: max(1, -(-n // per_ctx))])[:n]


class IteratorSource:
    """Batches [b, d] from any iterable, in order; under torchrun each process passes its own iterable
    (its own shard). Steps must be asked in order; on resume the iterable is replayed up to the step."""

    def __init__(self, batches: Iterable[Tensor], keep: int = 16):
        self._it = iter(batches)
        self._next = 0
        self._recent: OrderedDict[int, Tensor] = OrderedDict()
        self._keep = keep

    def batch(self, step: int) -> Tensor:
        if step in self._recent:
            return self._recent[step]
        if step < self._next:
            raise ValueError(f"IteratorSource cannot go back to step {step} (it is at {self._next})")
        while self._next <= step:
            try:
                x = next(self._it)
            except StopIteration:
                raise ValueError(
                    f"the batch iterator ran out after {self._next} batches; training needs more "
                    "(lower total_tokens or give a longer iterator)"
                ) from None
            x = torch.as_tensor(x).float()
            if x.dim() != 2:
                raise ValueError(f"batches must be [batch, d] tensors, got shape {tuple(x.shape)}")
            self._recent[self._next] = x
            self._next += 1
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
        return self._recent[step]

    def calibration(self, n: int) -> Tensor:
        """The first batches, gathered from every process, up to n rows."""
        rows, step = [all_gather_cat(self.batch(0))], 1
        while sum(len(r) for r in rows) < n and step < self._keep:
            rows.append(all_gather_cat(self.batch(step)))
            step += 1
        return torch.cat(rows)[:n]
