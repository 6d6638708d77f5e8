"""`lmscope corpus build|sources`: a labelled text corpus from local man pages and source code."""

from __future__ import annotations

from ..data.corpus import CorpusOptions
from .flags import add_flags, build

HELP = "build a labelled text corpus from local man pages and source code"


def add_arguments(parser) -> None:
    add_flags(parser, CorpusOptions)


def run(args) -> None:
    from ..data.corpus import build_corpus, corpus_summary, default_corpus_dir
    from ..data.sources import builtin_sources, jsonl_file, text_files

    opts = build(CorpusOptions, args)
    if opts.action == "sources":
        for src in builtin_sources():
            print(
                f"{src.name:18s} {'ok' if src.available else src.missing}"
                + (f"  -> {src.install}" if src.install else "")
            )
        return
    extra = []
    for spec in opts.text or []:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise ValueError(f"--text takes LABEL=FOLDER, got {spec!r}")
        extra.append(text_files(folder, label))
    extra += [jsonl_file(path) for path in opts.jsonl or []]
    sources = extra if not opts.builtin else [*builtin_sources(), *extra] if extra else None
    out = build_corpus(
        opts.out or default_corpus_dir(),
        labels=opts.labels,
        max_docs_per_label=opts.max_docs_per_label,
        max_chars=opts.max_chars,
        test_fraction=opts.test_fraction,
        seed=opts.seed,
        sources=sources,
        workers=opts.workers,
    )
    print(corpus_summary(out))
    print(f"wrote {out}")
