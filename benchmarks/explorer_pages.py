"""Explorer page times on a large SAE run: start-up, the feature list, one feature page (cold and warm).

    python benchmarks/explorer_pages.py [--features 16384] [--examples 8] [--tokens 32]

Writes a synthetic SAE run (feature_stats.json and cards paged 256 to a file, no weights: no live box) to a
temporary folder, then times each request through the app in one process. The baseline is what an eager
explorer would do at start-up: read every card page. The explorer reads one page per feature page shown.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from lmscope.explorer import create_app
from lmscope.explorer.data import PAGE_SIZE, read_json_file
from lmscope.report.runs import write_json, write_run


def make_run(folder: Path, n_features: int, n_examples: int, n_tokens: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    density = rng.beta(0.5, 30, n_features)
    max_act = rng.gamma(2.0, 2.0, n_features)
    write_json(
        folder / "feature_stats.json",
        {
            "n_features": n_features,
            "density": density.tolist(),
            "max_act": max_act.tolist(),
            "mean_act": (density * max_act / 3).tolist(),
        },
    )
    words = [f" w{i}" for i in range(500)]
    for start in range(0, n_features, PAGE_SIZE):
        cards = []
        for f in range(start, min(start + PAGE_SIZE, n_features)):
            examples = [
                {
                    "tokens": [words[i] for i in rng.integers(0, 500, n_tokens)],
                    "acts": np.round(rng.random(n_tokens) * max_act[f], 3).tolist(),
                    "peak": int(rng.integers(0, n_tokens)),
                    "label": "english",
                }
                for _ in range(n_examples)
            ]
            counts, edges = np.histogram(rng.gamma(2.0, 1.0, 500), bins=30)
            cards.append(
                {
                    "id": str(f),
                    "kind": "feature",
                    "site": "blocks.8.resid_post",
                    "index": f,
                    "title": "",
                    "density": float(density[f]),
                    "max_act": float(max_act[f]),
                    "mean_act": 0.1,
                    "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
                    "top_examples": examples,
                    "quantile_examples": [{"range": [0, 1], "examples": examples[:3]}],
                    "promoted": [[w, 1.0] for w in words[:10]],
                    "suppressed": [[w, -1.0] for w in words[10:20]],
                }
            )
        write_json(folder / "features" / f"{start // PAGE_SIZE:05d}.json", {"start": start, "cards": cards})
    write_run(folder, "sae", "benchmark SAE", model="none", site="blocks.8.resid_post")
    return folder


def timed(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=16384)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        run = make_run(root / "sae", args.features, args.examples, args.tokens)
        n_pages = len(list((run / "features").glob("*.json")))
        size = sum(p.stat().st_size for p in run.rglob("*.json")) / 2**20
        print(
            f"{args.features} features, {n_pages} card pages, {size:.0f} MiB (written in {time.perf_counter() - t:.1f} s)"
        )

        def ok(client, url):
            assert client.get(url).status_code == 200, url

        client = None

        def start():
            nonlocal client
            client = TestClient(create_app(root))

        rows = [("start-up (scan runs)", timed(start))]
        rows.append(("feature list, first (reads stats)", timed(lambda: ok(client, "/runs/sae"))))
        rows.append(
            ("feature list, sorted, page 40", timed(lambda: ok(client, "/runs/sae?sort=max_act&page=40"), 5))
        )
        far = args.features - 7
        rows.append(
            ("feature page, cold (reads 1 page)", timed(lambda: ok(client, f"/runs/sae/units/{far}")))
        )
        rows.append(("feature page, warm", timed(lambda: ok(client, f"/runs/sae/units/{far - 1}"), 5)))
        baseline = timed(lambda: [read_json_file(p) for p in sorted((run / "features").glob("*.json"))])
        rows.append(("baseline: read every card page", baseline))
        print(f"{'step':40s} {'seconds':>9s} {'vs baseline':>12s}")
        for name, sec in rows:
            print(f"{name:40s} {sec:9.3f} {sec / baseline:11.3f}x")


if __name__ == "__main__":
    main()
