"""Labelled text corpora from local sources: build once, load by split and label.

    path = build_corpus("corpus/", labels=["english", "french", "python"], max_docs_per_label=400)
    train = load_corpus(path, split="train")          # list[Document]

A corpus folder holds ``docs.jsonl`` (one document per line, labels mixed in a seeded order),
``manifest.json`` (counts per label and split, the sources used and those missing, the settings),
``report.html`` and ``run.json`` (kind "corpus"). Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..report import Text, esc, page, save_page, table
from ..runs import read_json, write_atomic, write_json, write_run
from .document import SPLITS, Document, doc_digest
from .sources import Source, apt_command, builtin_sources, hf_dataset, jsonl_file, text_files

DOCS_FILE = "docs.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT = "lmscope-corpus"


@dataclass
class CorpusOptions:
    """What `lmscope corpus` sets (build_corpus's defaults are these)."""

    action: str = field(
        metadata={
            "positional": True,
            "choices": ("build", "sources"),
            "help": "build: write a corpus; sources: list what is here",
        }
    )
    out: str | None = field(
        default=None, metadata={"help": "corpus folder (default: <cache>/corpora/default)"}
    )
    labels: list[str] | None = field(
        default=None,
        metadata={"sep": ",", "help": "comma-separated, e.g. english,french,python (default: all present)"},
    )
    max_docs_per_label: int = field(
        default=400, metadata={"flag": "--max-docs", "help": "documents per label at most"}
    )
    max_chars: int = field(default=4000, metadata={"help": "characters per document at most"})
    test_fraction: float = 0.2
    seed: int = 0
    workers: int = field(default=2, metadata={"help": "parallel man-page renders"})
    text: list[str] | None = field(
        default=None,
        metadata={"action": "append", "metavar": "LABEL=FOLDER", "help": "add your .txt files (repeatable)"},
    )
    jsonl: list[str] | None = field(
        default=None,
        metadata={
            "action": "append",
            "metavar": "FILE",
            "help": 'add a JSONL of {"text", "label"} (repeatable)',
        },
    )
    builtin: bool = field(default=True, metadata={"help": "use only --text/--jsonl sources"})


def default_corpus_dir() -> Path:
    """Where `lmscope corpus build` writes and other commands look when no folder is given."""
    from ..model import cache_root

    return cache_root() / "corpora" / "default"


def build_corpus(
    out_dir: str | os.PathLike,
    labels: Sequence[str] | None = None,
    max_docs_per_label: int = CorpusOptions.max_docs_per_label,
    max_chars: int = CorpusOptions.max_chars,
    test_fraction: float = CorpusOptions.test_fraction,
    seed: int = CorpusOptions.seed,
    *,
    sources: Sequence[Source] | None = None,
    min_chars: int = 200,
    workers: int = CorpusOptions.workers,
    progress: bool = True,
) -> Path:
    """Collect, de-duplicate and split documents; write the corpus folder and return its path.

    labels: the labels to collect; None = every label whose source is present (missing ones are reported
        in the manifest with the command that installs them). An explicitly requested label with no source
        here is an error.
    sources: where documents come from (default: the built-in local sources, see `builtin_sources`);
        add users' own text with `text_files(folder, label)`, `jsonl_file(path)` or `hf_dataset(name, ...)`.
    max_chars: documents are cut (at a line break) to this length; shorter than min_chars are skipped.
    test_fraction: the share of each label's documents held out as the "test" split (by document).
    workers: parallel man-page renders.
    """
    _check_settings(max_docs_per_label, max_chars, min_chars, test_fraction)
    start = time.perf_counter()
    wanted = None if labels is None else list(dict.fromkeys(labels))
    if sources is None:
        sources = builtin_sources(wanted)
    sources = [s for s in sources if wanted is None or not s.labels or set(s.labels) & set(wanted)]
    missing = [s for s in sources if not s.available]
    _check_requested(wanted, sources)
    for src in missing:
        print(f"lmscope corpus: skipping {src.name}: {src.missing}. Install: {src.install}", file=sys.stderr)

    docs, used = _collect(sources, wanted, max_docs_per_label, max_chars, min_chars, seed, workers, progress)
    if not docs:
        raise ValueError(
            "no documents collected: every source was missing or empty "
            f"({'; '.join(f'{s.name}: {s.missing}' for s in missing) or 'check the labels'})"
        )
    docs = split_documents(docs, test_fraction, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in docs)
    write_atomic(out / DOCS_FILE, lines.encode("utf-8"))
    manifest = _manifest(docs, sources, used, missing, seconds=time.perf_counter() - start)
    manifest["settings"] = dict(
        labels=wanted,
        max_docs_per_label=max_docs_per_label,
        max_chars=max_chars,
        min_chars=min_chars,
        test_fraction=test_fraction,
        seed=seed,
    )
    write_json(out / MANIFEST_FILE, manifest)
    save_page(corpus_report(manifest, docs), out / "report.html")
    write_run(
        out,
        "corpus",
        f"Corpus: {len(docs)} documents, {len(manifest['labels'])} labels",
        **_run_meta(manifest),
    )
    return out


def _check_settings(max_docs: int, max_chars: int, min_chars: int, test_fraction: float) -> None:
    if max_docs < 1:
        raise ValueError(f"max_docs_per_label must be at least 1, got {max_docs}")
    if not 0 <= min_chars < max_chars:
        raise ValueError(f"need 0 <= min_chars < max_chars, got min_chars={min_chars}, max_chars={max_chars}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


def _check_requested(wanted: list[str] | None, sources: list[Source]) -> None:
    """An explicitly requested label must have an available source (or one whose labels come from data)."""
    if wanted is None:
        return
    open_ended = any(s.available and not s.labels for s in sources)
    for label in wanted:
        have = [s for s in sources if label in s.labels]
        if open_ended or any(s.available for s in have):
            continue
        if not have:
            raise ValueError(
                f"no source gives the label {label!r}; sources: {', '.join(s.name for s in sources)}"
            )
        fix = "; ".join(f"{s.missing} (install: {s.install})" if s.install else s.missing for s in have)
        raise ValueError(f"label {label!r} has no usable source here: {fix}")


def _collect(sources, wanted, cap, max_chars, min_chars, seed, workers, progress):
    """-> (documents in collection order, {source name: documents taken}). At most `cap` per label."""
    from tqdm.auto import tqdm

    docs: list[Document] = []
    seen: set[str] = set()
    per_label: Counter = Counter()
    used: Counter = Counter()
    for src in sources:
        if not src.available:
            continue
        labels = [label for label in src.labels if wanted is None or label in wanted]
        if src.labels and not labels:
            continue
        bar = tqdm(total=cap * len(labels) or None, desc=src.name, disable=not progress, leave=False)
        stream = src.read(max_chars=max_chars, seed=seed, workers=workers)
        try:
            for doc in stream:
                if (wanted is not None and doc.label not in wanted) or len(doc.text) < min_chars:
                    continue
                if per_label[doc.label] >= cap:
                    if labels and all(per_label[label] >= cap for label in labels):
                        break  # this source has nothing more to give
                    continue
                digest = doc_digest(doc.text)
                if digest in seen:
                    continue
                seen.add(digest)
                docs.append(doc)
                per_label[doc.label] += 1
                used[src.name] += 1
                bar.update()
        finally:
            stream.close()  # stops a man-page render pool early
            bar.close()
    return docs, used


def split_documents(docs: Iterable[Document], test_fraction: float, seed: int = 0) -> list[Document]:
    """Give each document a split (per label, `test_fraction` of them "test", at least one of each when a
    label has two or more documents) and return all of them in a seeded order with labels mixed."""
    by_label: dict[str, list[Document]] = defaultdict(list)
    for doc in docs:
        by_label[doc.label].append(doc)
    rng = random.Random(seed)
    out = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda d: d.id)
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        if test_fraction > 0 and len(group) >= 2:
            n_test = min(max(n_test, 1), len(group) - 1)
        for i, doc in enumerate(group):
            doc.split = "test" if i < n_test else "train"
        out += group
    rng.shuffle(out)
    return out


def _manifest(docs, sources, used, missing, seconds: float) -> dict:
    counts: dict[str, dict] = {}
    for doc in docs:
        row = counts.setdefault(doc.label, {"train": 0, "test": 0, "chars": 0})
        row[doc.split] += 1
        row["chars"] += len(doc.text)
    needed = sorted({pkg for s in missing for pkg in s.packages})
    return {
        "format": FORMAT,
        "version": 1,
        "n_docs": len(docs),
        "labels": {label: counts[label] for label in sorted(counts)},
        "sources": [
            {"name": s.name, "labels": list(s.labels), "n_docs": used.get(s.name, 0), "missing": s.missing}
            for s in sources
        ],
        "missing": [{"name": s.name, "reason": s.missing, "install": s.install} for s in missing],
        "install": apt_command(needed) if needed else "",
        "build_seconds": round(seconds, 1),
    }


def _run_meta(manifest: dict) -> dict:
    return {
        "n_docs": manifest["n_docs"],
        "labels": {k: v["train"] + v["test"] for k, v in manifest["labels"].items()},
        "missing": [m["name"] for m in manifest["missing"]],
    }


def corpus_report(manifest: dict, docs: Sequence[Document]) -> str:
    """The corpus's report page: counts per label and split, sources, and an excerpt per label."""
    rows = [
        {
            "label": label,
            "train": c["train"],
            "test": c["test"],
            "total": c["train"] + c["test"],
            "mean chars": c["chars"] / max(1, c["train"] + c["test"]),
        }
        for label, c in manifest["labels"].items()
    ]
    sources = [
        {"source": s["name"], "documents": s["n_docs"], "status": s["missing"] or "ok"}
        for s in manifest["sources"]
    ]
    excerpts = []
    for label in manifest["labels"]:
        first = next(d for d in docs if d.label == label)
        excerpts += [f"<h3>{esc(label)}</h3>", f"<pre>{esc(first.text[:600])}</pre>"]
    sections = [("Documents per label", table(rows, float_format="{:.0f}")), ("Sources", table(sources))]
    if manifest["install"]:
        sections.append(("Missing sources", Text(f"Install them with:\n{manifest['install']}")))
    sections.append(("One document per label (first 600 characters)", "\n".join(excerpts)))
    subtitle = f"{manifest['n_docs']} documents, built in {manifest['build_seconds']} s"
    return page("Corpus", sections, subtitle=subtitle)


def corpus_summary(path: str | os.PathLike) -> str:
    """A few lines on a built corpus: documents per label and split, and any missing sources."""
    m = read_json(Path(path) / MANIFEST_FILE)
    lines = [f"{'label':12s} {'train':>6s} {'test':>6s}"]
    lines += [f"{label:12s} {c['train']:6d} {c['test']:6d}" for label, c in m["labels"].items()]
    lines.append(f"{m['n_docs']} documents in {m['build_seconds']} s")
    lines += [f"missing: {s['name']}: {s['reason']}" for s in m["missing"]]
    if m["install"]:
        lines.append(f"install the missing sources with: {m['install']}")
    return "\n".join(lines)


def load_corpus(
    path: str | os.PathLike | None = None, split: str | None = None, labels: Sequence[str] | None = None
) -> list[Document]:
    """The documents of a corpus folder (or its docs.jsonl), optionally one split and some labels.

    path None reads the default corpus (`lmscope corpus build` writes it there).
    """
    path = default_corpus_dir() if path is None else Path(path)
    file = path / DOCS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no corpus at {path} (expected {DOCS_FILE} in it); build one with `lmscope corpus build --out {path}`"
        )
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    with file.open(encoding="utf-8") as f:
        docs = [Document(**json.loads(line)) for line in f if line.strip()]
    present = sorted({d.label for d in docs})
    if labels is not None:
        unknown = [label for label in labels if label not in present]
        if unknown:
            raise ValueError(f"labels {unknown} are not in the corpus at {path}; it has {', '.join(present)}")
        docs = [d for d in docs if d.label in set(labels)]
    return [d for d in docs if split is None or d.split == split]


__all__ = [
    "Document",
    "Source",
    "build_corpus",
    "corpus_summary",
    "builtin_sources",
    "default_corpus_dir",
    "hf_dataset",
    "jsonl_file",
    "load_corpus",
    "split_documents",
    "text_files",
]
