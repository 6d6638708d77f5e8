"""DAS training speed: lmscope's step vs a plain PyTorch loop with a forward hook on the whole model.

    python benchmarks/das.py [--site blocks.21.resid_post] [--epochs 10] [--batch 20] [--n 80] [--model NAME]

Both train a 1-dim orthogonally parametrised subspace on the same IOI name-order pairs with the same loss
(cross-entropy towards the source's answer), initial direction, optimiser, schedule and batches (the order
train_subspace uses). The baseline runs the whole model on the whole prompt every step and patches with a
forward hook on the block's output; lmscope starts at the patched layer from cached activations and computes
only the last position (earlier positions' keys/values are cached once: the patch cannot change them).

Each method's one-off preparation (source activations for the baseline; site_problem's two caching runs for
lmscope) is timed apart from its training steps. The table shows both, the training steps/s, the end-to-end
time of the whole run and the ratios (also from CPU seconds, which a busy machine distorts less), the
1-minute load average, and the loss of both at the same steps (they should agree to ~1e-4).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import lmscope as ls
from lmscope.causal.das import train_subspace
from lmscope.causal.das_report import ioi_position_tasks
from lmscope.causal.subspace import site_problem
from lmscope.model.sites import split_site


def load_note() -> str:
    """The 1-minute load average next to the core count: timings are only comparable on a quiet machine."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    quiet = "quiet" if load < 0.5 * cores else "NOT quiet: absolute times are off, ratios less so"
    return f"1-min load average {load:.2f} on {cores} cores ({quiet})"


class Timer:
    """Wall-clock and CPU seconds of a block (CPU time is what a busy machine distorts least)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def batch_order(n: int, batch: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The example indices of every step, in the order train_subspace draws them."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        steps += [order[i : i + batch] for i in range(0, n, batch)]
    return steps


def rotation_and_optimiser(d: int, k: int, lr: float, seed: int, n_steps: int):
    """train_subspace's initial rotation (orthonormal rows [k, d]), Adam and linear decay, seeded alike."""
    torch.manual_seed(seed)
    rotation = torch.nn.Linear(d, k, bias=False)
    torch.nn.init.orthogonal_(rotation.weight)
    torch.nn.utils.parametrizations.orthogonal(rotation)
    opt = torch.optim.Adam(rotation.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=max(n_steps, 1))
    return rotation, opt, sched


def source_at_last(model, task, site: str) -> torch.Tensor:
    """The site's activation [n, d] at the last position of the corrupt (source) prompts."""
    with torch.no_grad():
        _, cache = model.run_with_cache(task.inputs("corrupt"), sites=[site], stop_at=site)
    return cache[site][:, -1]


def whole_model_hook(model, task, site: str, steps: list, lr: float, seed: int) -> dict:
    """A pyvene-style loop: whole forward, hook on the block output at the last position."""
    layer, kind = split_site(site)
    assert kind == "resid_post", "the baseline hooks a block's output (resid_post)"
    with Timer() as prepare:
        source = source_at_last(model, task, site)
    rotation, opt, sched = rotation_and_optimiser(model.cfg.d_model, 1, lr, seed, len(steps))
    params = list(rotation.parameters())
    state = {}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        v = rotation.weight.T  # [d, 1]
        last = hidden[:, -1]
        patched = last + ((state["src"] - last) @ v) @ v.T
        hidden = torch.cat([hidden[:, :-1], patched[:, None]], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.parts.blocks[layer].register_forward_hook(hook)
    inputs, losses = task.inputs("clean"), []
    try:
        with Timer() as train:
            for idx in steps:
                state["src"] = source[idx]
                # model(...) is the plain HF forward here (no lmscope site is hooked), with the position ids
                # of padded prompts computed as lmscope does
                logits = model({k: v[idx] for k, v in inputs.items()})
                loss = F.cross_entropy(logits[:, -1], task.wrong[idx])
                for p, g in zip(params, torch.autograd.grad(loss, params)):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                losses.append(float(loss.detach()))
    finally:
        handle.remove()
    return {"prepare": prepare, "train": train, "losses": losses}


def lmscope_das(model, task, site: str, epochs: int, batch: int, lr: float, seed: int) -> dict:
    with Timer() as prepare:
        problem = site_problem(model, task, site)
    losses: list[float] = []
    with Timer() as train:
        train_subspace(problem, 1, epochs, lr, batch, "ce", seed, progress=False, on_step=losses.append)
    return {"prepare": prepare, "train": train, "losses": losses}


def print_table(rows: dict[str, dict], reference: str) -> None:
    """rows: method -> {prepare: Timer, train: Timer, losses}; x = speed-up over `reference` (wall clock;
    cpu x: the same from CPU seconds)."""

    def rates(r):
        n = len(r["losses"])
        return (
            n / r["train"].wall,
            n / r["train"].cpu,
            r["prepare"].wall + r["train"].wall,
            r["prepare"].cpu + r["train"].cpu,
        )

    ref = rates(rows[reference])
    print(
        f"{'method':34s} {'prepare s':>9s} {'steps':>6s} {'train s':>8s} {'steps/s':>8s} {'x':>6s} "
        f"{'cpu x':>6s} {'total s':>8s} {'x':>6s} {'cpu x':>6s}"
    )
    for name, r in rows.items():
        rate, cpu_rate, total, cpu_total = rates(r)
        print(
            f"{name:34s} {r['prepare'].wall:9.2f} {len(r['losses']):6d} {r['train'].wall:8.2f} {rate:8.2f} "
            f"{rate / ref[0]:5.1f}x {cpu_rate / ref[1]:5.1f}x {total:8.2f} {ref[2] / total:5.1f}x "
            f"{ref[3] / cpu_total:5.1f}x"
        )


def print_curves(rows: dict[str, dict], every: int) -> None:
    names = list(rows)
    print("\nloss at equal steps (same initial direction, batches and optimiser)")
    print(f"{'step':>5s} " + " ".join(f"{n[:24]:>24s}" for n in names))
    n_steps = min(len(r["losses"]) for r in rows.values())
    for i in sorted({*range(0, n_steps, every), n_steps - 1}):
        print(f"{i + 1:5d} " + " ".join(f"{rows[n]['losses'][i]:24.5f}" for n in names))
    first = rows[names[0]]["losses"][:n_steps]
    for name in names[1:]:
        diff = max(abs(a - b) for a, b in zip(first, rows[name]["losses"][:n_steps]))
        print(f"largest loss difference, {names[0]} vs {name}: {diff:.2e}")


def setup(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ls.load(args.model)
    task, _ = ioi_position_tasks(model, n=args.n, n_test=2)
    steps = batch_order(len(task), args.batch, args.epochs, args.seed)
    print(
        f"{model.cfg.name}: {args.site}, {len(task)} prompt pairs, batch {args.batch} x {task.clean.shape[1]} "
        f"tokens, {args.epochs} epochs = {len(steps)} steps, {torch.get_num_threads()} threads; {load_note()}"
    )
    return model, task, steps


def arguments(doc: str):
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--site", default="blocks.21.resid_post")
    parser.add_argument("--epochs", type=int, default=10, help="das()'s default")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--n", type=int, default=80, help="training prompt pairs")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--model", default=None)
    return parser


def main() -> None:
    args = arguments(__doc__).parse_args()
    model, task, steps = setup(args)
    rows = {
        "whole model, forward hook": whole_model_hook(model, task, args.site, steps, args.lr, args.seed),
        "lmscope (cached prefix)": lmscope_das(
            model, task, args.site, args.epochs, args.batch, args.lr, args.seed
        ),
    }
    print_table(rows, reference="whole model, forward hook")
    print_curves(rows, every=max(1, len(steps) // 8))
    print(load_note())


if __name__ == "__main__":
    main()
