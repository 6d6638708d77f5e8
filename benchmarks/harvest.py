"""Harvest throughput and memory: storing the MLP neurons of every layer vs a plain forward pass.

    python benchmarks/harvest.py [--tokens 2048] [--sizes 2048,8192,32768] [--batch 8] [--dtype float32] [--threads 1]

Throughput: in one process, over the same packed contexts of real corpus text, alternates (1) a plain forward
(model(tokens), logits included) and (2) harvest() of blocks.*.mlp.post into a temporary store, `--repeats`
times each, and reports the best time of each (the least disturbed by other work on the machine). Target:
harvest >= 0.9x the forward's tokens/s.
Memory: for each corpus size, a fresh subprocess loads the model, resets its RSS high-water mark, runs a plain
forward or a harvest over that many tokens and reports the new high-water mark (VmHWM). Target: the
harvest's peak does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SITES = "blocks.*.mlp.post"


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Linux resets VmHWM to the current RSS on `echo 5 > /proc/self/clear_refs`."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def corpus_dir(scratch: Path) -> Path:
    """The default corpus when it has been built, else a small one built here from local sources."""
    from lmscope.data.corpus import build_corpus, default_corpus_dir

    if (default_corpus_dir() / "docs.jsonl").is_file():
        return default_corpus_dir()
    return build_corpus(scratch / "corpus", labels=["english", "french", "python"], max_docs_per_label=60)


def dataset(model, corpus: Path, n_tokens: int, ctx_len: int):
    from lmscope.data.corpus import load_corpus
    from lmscope.data.tokens import tokenize_corpus

    n_ctx = -(-n_tokens // ctx_len)
    ds = tokenize_corpus(model, load_corpus(corpus, split="train"), ctx_len=ctx_len, max_contexts=n_ctx)
    if len(ds) < n_ctx:
        raise SystemExit(f"the corpus at {corpus} has only {ds.n_tokens} tokens; ask for fewer")
    return ds


def forward(model, ds, batch: int) -> None:
    with torch.no_grad():
        for b in ds.batches(batch):
            model(b["input_ids"], attention_mask=b["attention_mask"])


def child(args) -> None:
    """One memory measurement; prints a JSON line."""
    import lmscope as ls
    from lmscope.data.store import harvest

    torch.set_num_threads(args.threads)
    model = ls.load()
    ds = dataset(model, Path(args.corpus), args.child_tokens, args.ctx_len)
    reset = reset_peak_rss()
    with tempfile.TemporaryDirectory() as tmp:
        if args.child_mode == "forward":
            forward(model, ds, args.batch)
        else:
            harvest(model, ds, SITES, tmp, dtype=args.dtype, batch_size=args.batch, progress=False)
        print(json.dumps({"tokens": ds.n_tokens, "peak_mib": peak_rss_mib(), "reset": reset}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per throughput pass")
    parser.add_argument(
        "--sizes", default="2048,8192,32768", help="corpus sizes (tokens) for the memory runs"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--child-mode", choices=["forward", "harvest"], help=argparse.SUPPRESS)
    parser.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mode:
        return child(args)

    import lmscope as ls
    from lmscope.data.store import harvest

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(args.corpus) if args.corpus else corpus_dir(Path(scratch))
        model = ls.load()
        ds = dataset(model, corpus, args.tokens, args.ctx_len)
        n_sites = len(model.resolve_sites(SITES))
        print(
            f"{model.cfg.name}: {ds.n_tokens} tokens ({len(ds)} x {args.ctx_len}), batch {args.batch}, "
            f"{args.threads} thread(s); harvest {SITES} ({n_sites} sites x {model.cfg.d_mlp}), {args.dtype}"
        )
        forward(model, ds[: args.batch], args.batch)  # warm-up
        best = {"forward": float("inf"), "harvest": float("inf")}
        for r in range(args.repeats):
            start = time.perf_counter()
            forward(model, ds, args.batch)
            best["forward"] = min(best["forward"], time.perf_counter() - start)
            store_dir = Path(scratch) / f"store{r}"
            start = time.perf_counter()
            harvest(model, ds, SITES, store_dir, dtype=args.dtype, batch_size=args.batch, progress=False)
            best["harvest"] = min(best["harvest"], time.perf_counter() - start)
            written = sum(p.stat().st_size for p in store_dir.rglob("*.safetensors"))
            shutil.rmtree(store_dir)
        rate = {k: ds.n_tokens / v for k, v in best.items()}
        print(f"\n{'pass':10s} {'best s':>8s} {'tokens/s':>9s} {'vs forward':>10s}")
        for k in best:
            print(f"{k:10s} {best[k]:8.2f} {rate[k]:9.1f} {rate[k] / rate['forward']:9.2f}x")
        print(f"harvest wrote {written / 2**20:.0f} MiB ({written / ds.n_tokens / 1024:.0f} KiB per token)")
        print(f"ratio harvest/forward: {rate['harvest'] / rate['forward']:.2f}x (target >= 0.9x)")

        print(f"\n{'run':8s} {'tokens':>7s} {'peak RSS MiB':>13s}")
        peaks = {}
        for mode in ("forward", "harvest"):
            for size in map(int, args.sizes.split(",")):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child-mode",
                    mode,
                    "--child-tokens",
                    str(size),
                    "--corpus",
                    str(corpus),
                    "--batch",
                    str(args.batch),
                    "--ctx-len",
                    str(args.ctx_len),
                    "--dtype",
                    args.dtype,
                    "--threads",
                    str(args.threads),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                peaks[mode, size] = result["peak_mib"]
                note = "" if result["reset"] else " (high-water mark not reset: includes loading)"
                print(f"{mode:8s} {result['tokens']:7d} {result['peak_mib']:13.0f}{note}")
        sizes = sorted({s for _, s in peaks})
        grow = peaks["harvest", sizes[-1]] - peaks["harvest", sizes[0]]
        print(
            f"harvest peak growth from {sizes[0]} to {sizes[-1]} tokens: {grow:+.0f} MiB (target <= 50 MiB)"
        )
        print(f"1-min load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
