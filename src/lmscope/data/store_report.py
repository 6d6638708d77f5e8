"""The report page of an activation store: what it holds, and per-site statistics by layer."""

from __future__ import annotations

import os
from collections import Counter

from ..model.sites import split_site
from ..report import bar_chart, line_chart, page, save_page, table


def store_report(store, path: str | os.PathLike) -> None:
    """Write `path`: sites (width, size on disk, mean row norm), tokens per label, norms by layer."""
    m = store.manifest
    n_shards = max(store.n_shards, 1)
    mean_stats = {
        site: {
            k: sum(s["stats"][site][k] * (s["stop"] - s["start"]) for s in m["shards"])
            / max(store.n_tokens, 1)
            for k in ("norm", "mean", "frac_pos")
        }
        for site in store.sites
    }
    rows = [
        {
            "site": site,
            "row shape": "x".join(map(str, m["row_shape"].get(site, [store.d(site)]))),
            "MiB": store.n_tokens * store.d(site) * store.dtype.itemsize / 2**20,
            "mean norm": mean_stats[site]["norm"],
            "mean": mean_stats[site]["mean"],
            "fraction > 0": mean_stats[site]["frac_pos"],
        }
        for site in store.sites
    ]
    labels = store.token_info()["labels"].tolist()
    counts = Counter(labels)
    names = store.label_names
    label_rows = [{"label": names[i] if i >= 0 else "(BOS)", "tokens": c} for i, c in sorted(counts.items())]
    sections = [("Sites", table(rows)), ("Tokens per label", table(label_rows))]
    by_kind: dict[str, dict[int, float]] = {}
    for site in store.sites:
        layer, kind = split_site(site)
        if layer is not None:
            by_kind.setdefault(kind, {})[layer] = mean_stats[site]["norm"]
    for kind, norms in by_kind.items():
        if len(norms) > 1:
            layers = sorted(norms)
            chart = line_chart(
                {kind: [norms[i] for i in layers]}, x=layers, xlabel="layer", ylabel="mean norm"
            )
            sections.append((f"Mean row norm of {kind} by layer", chart))
    if not any(len(v) > 1 for v in by_kind.values()) and len(rows) > 1:
        sections.append(
            ("Mean row norm", bar_chart([r["mean norm"] for r in rows], [r["site"] for r in rows]))
        )
    subtitle = (
        f"{m['model']}: {store.n_tokens} tokens in {n_shards} shards of {m['shard_tokens']}, {m['dtype']}"
        + ("" if store.complete else " (incomplete)")
    )
    save_page(page("Activation store", sections, subtitle=subtitle), path)
