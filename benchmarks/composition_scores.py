"""Composition scores through the heads' low-rank factors vs dense d_model x d_model products.

    python benchmarks/composition_scores.py [--d-model 576] [--d-head 64] [--writers 90] [--readers 9]

Random factors of a head's shapes (SmolLM2-135M by default: 10 earlier layers of 9 heads writing into one
layer of 9 readers). Both ways run in this process, interleaved; prints the median time of each, the ratio,
and the largest difference between their scores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmscope.circuits.composition import _scores


def dense(a, b, c, d) -> torch.Tensor:
    """|A_w B_w C_n D_n| / (|A_w B_w| |C_n D_n|) with every product formed: [n_w, n_r]."""
    writers, readers = a @ b, c @ d  # [w, d, d], [n, d, d]
    out = torch.empty(len(writers), len(readers))
    for i, x in enumerate(writers):
        out[i] = (x @ readers).norm(dim=(-2, -1)) / (x.norm() * readers.norm(dim=(-2, -1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--writers", type=int, default=90)
    parser.add_argument("--readers", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    d, r = args.d_model, args.d_head
    a, b = torch.randn(args.writers, d, r, generator=gen), torch.randn(args.writers, r, d, generator=gen)
    c, e = torch.randn(args.readers, d, r, generator=gen), torch.randn(args.readers, r, d, generator=gen)
    times = {"factored": [], "dense": []}
    for _ in range(args.repeats):
        for name, fn in (("factored", _scores), ("dense", dense)):
            start = time.perf_counter()
            result = fn(a, b, c, e)
            times[name].append(time.perf_counter() - start)
            if name == "factored":
                factored = result
    gap = float((factored - result).abs().max())
    base = statistics.median(times["dense"])
    print(f"{'method':10s} {'median s':>10s} {'vs dense':>9s}")
    for name, ts in times.items():
        print(f"{name:10s} {statistics.median(ts):10.4f} {statistics.median(ts) / base:9.3f}")
    print(
        f"{args.writers} x {args.readers} pairs, d_model {d}, d_head {r}; largest score difference {gap:.2e}"
    )


if __name__ == "__main__":
    main()
