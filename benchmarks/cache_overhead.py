"""Overhead of lmscope's hooks and cache over a plain Hugging Face forward, on the bundled model.

    python benchmarks/cache_overhead.py [--batch 8] [--seq 32] [--repeats 15]

Runs every variant interleaved in one process (so machine noise hits all alike) and prints the median
time of each and its ratio to the plain HF forward, then the same for each group of sites alone (which sites
cost what), with the 1-minute load average. Targets (issues 2, 17): no sites <= 1.02x, every site <= 1.10x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import lmscope as ls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    model = ls.load(args.model)
    tokens = torch.randint(
        100, model.cfg.d_vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    resid_sites = ["blocks.*.resid_pre", "blocks.*.resid_mid", "blocks.*.resid_post"]
    cache_bytes: dict[str, int] = {}

    def cached(name, sites):
        def run():
            _, cache = model.run_with_cache(tokens, sites=sites)
            cache_bytes[name] = cache.nbytes

        return run

    groups = {  # per-layer sites by where they are read, plus the global ones
        "q, k, v": ["blocks.*.attn.q", "blocks.*.attn.k", "blocks.*.attn.v"],
        "attn.pattern": ["blocks.*.attn.pattern"],
        "attn.z": ["blocks.*.attn.z"],
        "attn.out": ["blocks.*.attn.out"],
        "resid_mid": ["blocks.*.resid_mid"],
        "mlp.pre, pre_linear, post": ["blocks.*.mlp.*"],
        "resid_pre, resid_post": ["blocks.*.resid_pre", "blocks.*.resid_post"],
        "embed, final.norm, logits": ["embed", "final.norm", "logits"],
    }
    groups = {name: model.resolve_sites(globs) for name, globs in groups.items()}
    groups["mlp.pre, pre_linear, post"] = [
        s for s in groups["mlp.pre, pre_linear, post"] if not s.endswith("mlp.out")
    ]
    variants = {
        "plain HF forward": lambda: model.hf(input_ids=tokens, use_cache=False).logits,
        "lmscope model(tokens), no sites": lambda: model(tokens),
        "run_with_cache, resid sites": cached("run_with_cache, resid sites", resid_sites),
        "run_with_cache, every site": cached("run_with_cache, every site", None),
        **{f"  only {name}": cached(f"  only {name}", sites) for name, sites in groups.items() if sites},
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    base = statistics.median(times["plain HF forward"])
    n_sites = {
        "run_with_cache, resid sites": len(model.resolve_sites(resid_sites)),
        "run_with_cache, every site": len(model.sites),
        **{f"  only {name}": len(sites) for name, sites in groups.items()},
    }
    load = os.getloadavg()[0]
    print(
        f"{model.cfg.name}: batch {args.batch} x {args.seq} tokens, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads; 1-min load average {load:.2f} on {os.cpu_count()} cores"
        + ("" if load < 0.5 * (os.cpu_count() or 1) else " (NOT quiet: ratios are noisy)")
    )
    print(f"{'variant':34s} {'sites':>6s} {'median s':>9s} {'ratio':>7s} {'cache MiB':>10s}")
    for name, ts in times.items():
        median = statistics.median(ts)
        mib = cache_bytes.get(name, 0) / 2**20
        print(f"{name:34s} {n_sites.get(name, 0):6d} {median:9.4f} {median / base:6.3f}x {mib:10.1f}")


if __name__ == "__main__":
    main()
