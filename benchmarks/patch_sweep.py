"""Fast exact patching sweeps vs the naive one-forward-per-index loop, on the bundled model.

    python benchmarks/patch_sweep.py [--examples 1] [--model NAME]

The naive loop is how TransformerLens's `patching` module works (it took 67 s here for a 360-forward
resid_pre sweep of one 12-token prompt). Both methods run in this process on the same task; the table
shows each time, the ratio, and the largest difference between their results. Sweeps: resid_pre x position,
attn.z x head, and mlp.post x neuron of one (the middle) layer. Target (issues 3, 17): >= 10x each.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import lmscope as ls
from lmscope.causal.sweep import patch_sweep
from lmscope.data.tasks import ContrastTask

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1, help="copies of the prompt pair in the batch")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    model = ls.load(args.model)
    n = args.examples
    task = ContrastTask.from_prompts(
        model, [CLEAN] * n, [CORRUPT] * n, [" Mary"] * n, [" John"] * n, name="ioi-1"
    )
    print(
        f"{model.cfg.name}: {n} x {task.clean.shape[1]}-token IOI prompt pair, {torch.get_num_threads()} threads; "
        f"1-min load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"{'sweep':34s} {'patches':>8s} {'naive s':>9s} {'fast s':>8s} {'speed-up':>9s} {'max |diff|':>11s}"
    )
    neuron_site = f"blocks.{model.cfg.n_layers // 2}.mlp.post"  # one MLP layer: d_mlp patches
    for site, per in [
        ("blocks.*.resid_pre", "position"),
        ("blocks.*.attn.z", "head"),
        (neuron_site, "neuron"),
    ]:
        timings, results = {}, {}
        for method in ("naive", "fast"):
            start = time.perf_counter()
            results[method] = patch_sweep(model, task, site, per=per, method=method, progress=False)
            timings[method] = time.perf_counter() - start
        diff = (results["fast"].per_example - results["naive"].per_example).abs().max().item()
        n_patches = results["fast"].values.numel()
        print(
            f"{site + ' x ' + per:34s} {n_patches:8d} {timings['naive']:9.2f} {timings['fast']:8.2f} "
            f"{timings['naive'] / timings['fast']:8.1f}x {diff:11.2e}"
        )


if __name__ == "__main__":
    main()
