"""Reading run folders for the explorer: the catalog of runs, unit cards, paging and a small page cache.

Everything here only reads. Request strings never become paths: a run is looked up by an id from the catalog
built by scanning the root folder, and card files are named from integers (``features/00003.json``).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runs import RUN_FILE, scan_runs

PAGE_SIZE = 256  # SAE cards per features/NNNNN.json file (the contract of SAE runs)
UNIT_KINDS = ("neurons", "sae")
RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
SORT_KEYS = ("index", "density", "max_act", "mean_act")


class NotFound(FileNotFoundError):
    """A run, unit or file the request asked for does not exist (the server answers 404)."""


def read_json_file(path: Path) -> object:
    """Parse a JSON file opened read-only."""
    with open(path, "rb") as f:
        return json.loads(f.read())


def _slug(parts: tuple[str, ...]) -> str:
    return ".".join(re.sub(r"[^A-Za-z0-9_-]+", "-", p).strip("-") or "run" for p in parts) or "run"


@dataclass
class Run:
    """One run folder: a URL-safe ``id``, its ``path`` and its ``run.json`` record."""

    id: str
    path: Path
    record: dict
    rel: str  # the folder relative to the root, for display

    @property
    def kind(self) -> str:
        return str(self.record.get("kind", ""))

    @property
    def title(self) -> str:
        return str(self.record.get("title") or self.path.name)

    @property
    def model(self) -> str:
        return str(self.record.get("model") or "")

    @property
    def created(self) -> str:
        return str(self.record.get("created") or "")

    def file(self, name: str) -> Path | None:
        """A file the run kind defines (``name`` is a constant of this module, never request text)."""
        path = self.path / name
        return path if path.is_file() else None


class Catalog:
    """The runs found under ``root`` (``root`` itself included), by id, and the folders whose run.json
    cannot be read (listed with the reason, never skipped in silence). Rescans at most every few seconds."""

    def __init__(self, root: str | Path, rescan_every: float = 5.0):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"no folder at {self.root}: give the folder that holds your run folders")
        self._rescan_every, self._scanned_at = rescan_every, -math.inf
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self.unreadable: list[tuple[str, str]] = []  # (folder relative to the root, why it cannot be read)
        self.rescan(force=True)

    def rescan(self, force: bool = False) -> None:
        """Pick up runs written since the last scan; ids of runs already known stay the same."""
        with self._lock:
            if not force and time.monotonic() - self._scanned_at < self._rescan_every:
                return
            runs: dict[str, Run] = {}
            found, unreadable = scan_runs(self.root)
            for path, record in found:
                parts = path.relative_to(self.root).parts or (self.root.name,)
                run_id, n = _slug(parts), 2
                while run_id in runs:  # two folders that slug alike: number the later one
                    run_id, n = f"{_slug(parts)}-{n}", n + 1
                old = self._runs.get(run_id)
                runs[run_id] = (
                    old
                    if old is not None and old.path == path
                    else Run(run_id, path, record, "/".join(parts))
                )
            self.unreadable = [("/".join(p.relative_to(self.root).parts) or ".", why) for p, why in unreadable]
            self._runs, self._scanned_at = runs, time.monotonic()

    @property
    def runs(self) -> list[Run]:
        return list(self._runs.values())

    def get(self, run_id: str) -> Run:
        run = self._runs.get(run_id) if RUN_ID.match(run_id or "") else None
        if run is None:
            raise NotFound(f"no run with id {run_id!r}; the index page lists the runs this server knows")
        if not (run.path / RUN_FILE).is_file():
            raise NotFound(f"run {run_id!r} is no longer on disk")
        return run


# ---- units: neurons and SAE features --------------------------------------------------------------------


@dataclass
class UnitStats:
    """Per-unit numbers for listing and sorting, each [n_units]; ``titles`` may be None (not saved)."""

    density: np.ndarray
    max_act: np.ndarray
    mean_act: np.ndarray
    titles: list[str] | None = None

    def __len__(self) -> int:
        return len(self.density)


def _floats(values: object, n: int, name: str) -> np.ndarray:
    arr = np.asarray([math.nan if v is None else v for v in (values or [math.nan] * n)], dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected {n} values, got {arr.shape[0]}")
    return arr


class _LRU:
    """A tiny thread-safe least-recently-used cache (a few SAE card pages, not all of them)."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass
class Units:
    """The units of a ``neurons`` or ``sae`` run: stats for all, cards loaded on demand.

    Neuron runs keep their few dozen cards in ``units.json``; SAE runs page theirs 256 to a file, and only the
    pages asked for are read (an LRU keeps ``cache_pages`` of them).
    """

    run: Run
    stats: UnitStats
    unit_kind: str  # "neuron" or "feature"
    _cards: list[dict] | None = None  # neuron runs: all cards
    _pages: _LRU = field(default_factory=lambda: _LRU(8))

    @classmethod
    def load(cls, run: Run, cache_pages: int = 8) -> Units:
        if run.kind == "neurons":
            path = run.file("units.json")
            if path is None:
                raise NotFound(f"run {run.id!r} has no units.json")
            cards = read_json_file(path).get("units", [])
            stats = UnitStats(
                *(
                    _floats([c.get(k) for c in cards], len(cards), k)
                    for k in ("density", "max_act", "mean_act")
                ),
                titles=[str(c.get("title") or c.get("id", "")) for c in cards],
            )
            return cls(run, stats, "neuron", cards, _LRU(cache_pages))
        if run.kind == "sae":
            path = run.file("feature_stats.json")
            if path is None:
                raise NotFound(f"run {run.id!r} has no feature_stats.json")
            raw = read_json_file(path)
            n = int(raw["n_features"])
            titles = raw.get("titles")
            stats = UnitStats(
                *(_floats(raw.get(k), n, k) for k in ("density", "max_act", "mean_act")),
                titles=[str(t) for t in titles] if isinstance(titles, list) and len(titles) == n else None,
            )
            return cls(run, stats, "feature", None, _LRU(cache_pages))
        raise NotFound(f"run {run.id!r} is a {run.kind!r} run, which has no units")

    def __len__(self) -> int:
        return len(self.stats)

    def check(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise NotFound(f"no unit {index} in run {self.run.id!r}: it has units 0..{len(self) - 1}")
        return index

    def card(self, index: int) -> dict | None:
        """The card of unit ``index`` (None when the run saved none for it, e.g. a dead feature)."""
        self.check(index)
        if self._cards is not None:
            return self._cards[index]
        page_no = index // PAGE_SIZE
        page = self._pages.get(page_no, lambda: self._read_page(page_no))
        cards = page.get("cards", [])
        k = index - int(page.get("start", page_no * PAGE_SIZE))
        return cards[k] if 0 <= k < len(cards) and isinstance(cards[k], dict) else None

    def _read_page(self, page_no: int) -> dict:
        path = self.run.path / "features" / f"{page_no:05d}.json"  # built from an int only
        return read_json_file(path) if path.is_file() else {}

    def title(self, index: int) -> str:
        return self.stats.titles[index] if self.stats.titles else ""

    def id_of(self, index: int) -> str:
        if self._cards is not None:
            return str(self._cards[index].get("id", index))
        return str(index)

    def index_of(self, unit_id: object) -> int | None:
        """Resolve an id as written in a card's ``nearest`` list to a unit index here (None if not here)."""
        if self._cards is not None:
            ids = {str(c.get("id")): i for i, c in enumerate(self._cards)}
            return ids.get(str(unit_id))
        match = re.search(r"(\d+)$", str(unit_id))
        if match is None or not 0 <= int(match.group(1)) < len(self):
            return None
        return int(match.group(1))

    def listing(
        self,
        sort: str = "density",
        descending: bool = True,
        query: str = "",
        min_density: float | None = None,
        max_density: float | None = None,
    ) -> np.ndarray:
        """Unit indices matching the filter, in the order asked for (NaN stats sort last)."""
        if sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
        keep = np.ones(len(self), dtype=bool)
        density = self.stats.density
        if min_density is not None:
            keep &= density >= min_density
        if max_density is not None:
            keep &= density <= max_density
        if query:
            q = query.lower()
            ids = [self.id_of(i).lower() for i in range(len(self))] if self._cards is not None else None
            titles = self.stats.titles
            keep &= np.array(
                [
                    (titles is not None and q in titles[i].lower())
                    or (ids is not None and q in ids[i])
                    or q == str(i)
                    for i in range(len(self))
                ],
                dtype=bool,
            )
        idx = np.flatnonzero(keep)
        if sort == "index":
            return idx[::-1] if descending else idx
        key = getattr(self.stats, sort)[idx]
        key = np.where(np.isnan(key), -np.inf if descending else np.inf, key)
        order = np.argsort(-key if descending else key, kind="stable")
        return idx[order]


class UnitsCache:
    """``Units`` per run id, created on first use."""

    def __init__(self):
        self._by_run: dict[str, Units] = {}
        self._lock = threading.Lock()

    def get(self, run: Run) -> Units:
        with self._lock:
            units = self._by_run.get(run.id)
            if units is None or units.run.path != run.path:
                units = self._by_run[run.id] = Units.load(run)
            return units
