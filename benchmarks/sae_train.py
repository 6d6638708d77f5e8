"""SAE training throughput: lmscope's training step vs a straightforward SAELens-style step, per architecture.

    python benchmarks/sae_train.py [--d 576] [--d-sae 4608] [--batch 4096] [--steps 3] [--threads 1]

Both run in this process on the same weights and batches, interleaved (so machine noise hits both alike).
The reference step is the plain one: encode densely, decode densely, loss, autograd backward, remove the
decoder gradient's parallel part, Adam, renormalise the decoder rows. lmscope's step builds no dense code
(TopK / BatchTopK / a sparse ReLU code are decoded with embedding_bag, and the encoder's backward touches
only the active pairs), projects and renormalises the decoder in place without autograd, and uses fused Adam.
The standard SAE is benchmarked in its trained regime (encoder biases set so that ~64 features fire per
token; early in training, with half the features firing, lmscope falls back to the dense path).

Peak memory: the growth of resident memory over a few steps, each variant measured in its own forked child.
Prints a table with tokens/s and the ratio (target >= 1.5x).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from lmscope.features.sae import SAE, Trainer, sae_config
from lmscope.features.sae.sources import RowSource


def make_trainer(arch: str, args, data: torch.Tensor) -> Trainer:
    extra = {"k": args.k} if arch != "standard" else {"resample_at": ()}
    cfg = sae_config(
        arch,
        d_in=args.d,
        d_sae=args.d_sae,
        batch_size=args.batch,
        total_tokens=100 * args.batch,
        normalize_activations=False,
        lr_decay_fraction=0.0,
        **extra,
    )
    trainer = Trainer(cfg, RowSource(data, args.batch))
    if arch == "standard":  # trained regime: about 64 features per token
        with torch.no_grad():
            pre = (data[: args.batch] - trainer.sae.b_dec) @ trainer.sae.W_enc
            trainer.sae.b_enc.copy_(-pre.quantile(1 - 64 / args.d_sae, dim=0))
        trainer.state.last_l0 = 64.0
    return trainer


class Reference:
    """The plain step: dense codes, autograd through everything, Adam (foreach), out-of-place renorm."""

    def __init__(self, sae: SAE, arch: str, k: int, lr: float = 3e-4):
        self.sae, self.arch, self.k = sae, arch, k
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=lr)

    def step(self, x: torch.Tensor) -> float:
        sae = self.sae
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        acts = F.relu(pre)
        if self.arch == "topk":
            top = acts.topk(self.k, dim=-1)
            acts = torch.zeros_like(acts).scatter(-1, top.indices, top.values)
        elif self.arch == "batchtopk":
            flat = acts.flatten()
            top = flat.topk(self.k * len(x))
            acts = torch.zeros_like(flat).scatter(-1, top.indices, top.values).view_as(acts)
        x_hat = acts @ sae.W_dec + sae.b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean()
        if self.arch == "standard":
            loss = loss + 5.0 * (acts * sae.W_dec.norm(dim=1)).sum(-1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        parallel = torch.einsum("ij,ij->i", sae.W_dec.grad, sae.W_dec.data)
        sae.W_dec.grad -= torch.einsum("i,ij->ij", parallel, sae.W_dec.data)
        self.optimizer.step()
        sae.W_dec.data = sae.W_dec.data / sae.W_dec.data.norm(dim=1, keepdim=True)
        return float(loss.detach())


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def _peak_child(queue, arch, which, args, data):
    torch.set_num_threads(args.threads)
    trainer = make_trainer(arch, args, data)
    step = trainer.train_step if which == "lmscope" else Reference(trainer.sae, arch, args.k).step
    base = _rss_kb()
    for s in range(2):
        step(data[s * args.batch : (s + 1) * args.batch])
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)


def peak_memory_mb(arch: str, which: str, args, data) -> float:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(queue, arch, which, args, data))
    proc.start()
    value = queue.get()
    proc.join()
    return value / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--archs", default="topk,batchtopk,standard")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(args.batch * (args.steps + 2), args.d, generator=gen)
    print(f"d_in {args.d}, d_sae {args.d_sae}, batch {args.batch}, k {args.k}, {args.threads} thread(s)")
    rows = []
    for arch in args.archs.split(","):
        ours = make_trainer(arch, args, data)
        ref_trainer = make_trainer(arch, args, data)
        reference = Reference(ref_trainer.sae, arch, args.k)
        times = {"lmscope": [], "reference": []}
        for s in range(args.steps + 1):
            x = data[s * args.batch : (s + 1) * args.batch]
            for name, step in (("lmscope", ours.train_step), ("reference", reference.step)):
                start = time.perf_counter()
                step(x)
                if s:  # the first step warms up
                    times[name].append(time.perf_counter() - start)
        t_ours, t_ref = statistics.median(times["lmscope"]), statistics.median(times["reference"])
        mem_ours, mem_ref = (
            peak_memory_mb(arch, "lmscope", args, data),
            peak_memory_mb(arch, "reference", args, data),
        )
        rows.append((arch, args.batch / t_ours, args.batch / t_ref, t_ref / t_ours, mem_ours, mem_ref))
    print(
        f"{'arch':10s} {'lmscope tok/s':>14s} {'reference tok/s':>16s} {'speed-up':>9s} {'lmscope MB':>11s} {'reference MB':>13s}"
    )
    for arch, ours_tps, ref_tps, ratio, mem_ours, mem_ref in rows:
        print(f"{arch:10s} {ours_tps:14.0f} {ref_tps:16.0f} {ratio:8.2f}x {mem_ours:11.0f} {mem_ref:13.0f}")
    print(f"geometric-mean speed-up {statistics.geometric_mean([r[3] for r in rows]):.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
