"""DAS training speed: lmscope's step vs a plain PyTorch loop with a forward hook (what pyvene does).

    python benchmarks/das.py [--site blocks.21.resid_post] [--steps 10] [--batch 20] [--model NAME]

Both train a 1-dim orthogonally parametrised subspace on the same IOI name-order pairs with the same
loss, optimiser and batches. The baseline runs the whole model on the whole prompt every step and patches
with a forward hook on the layer's output; lmscope starts at the patched layer from cached activations and
computes only the last position (earlier positions' keys/values are cached: the patch cannot change them).
The table shows steps/s for each, the ratio, and the loss difference after the same steps. Target: >= 2x.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import lmscope as ls
from lmscope.causal.das import train_subspace
from lmscope.causal.das_report import ioi_position_tasks
from lmscope.causal.subspace import site_problem
from lmscope.model.sites import split_site


def baseline(model, task, site: str, steps: int, batch: int, lr: float, seed: int) -> tuple[float, float]:
    """A pyvene-style loop: full forward, hook on the block output at the last position. -> (s, last loss)."""
    layer, kind = split_site(site)
    assert kind == "resid_post", "the baseline hooks a block's output (resid_post)"
    with torch.no_grad():
        _, cache = model.run_with_cache(task.inputs("corrupt"), sites=[site])
    source = cache[site][:, -1]  # [n, d]
    torch.manual_seed(seed)
    rotation = torch.nn.Linear(model.cfg.d_model, 1, bias=False)
    torch.nn.init.orthogonal_(rotation.weight)
    torch.nn.utils.parametrizations.orthogonal(rotation)
    opt = torch.optim.Adam(rotation.parameters(), lr=lr)
    for p in model.hf.parameters():
        p.requires_grad_(False)
    block = model.parts.blocks[layer]
    state = {}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        v = rotation.weight.T  # [d, 1]
        last = hidden[:, -1]
        patched = last + ((state["src"] - last) @ v) @ v.T
        hidden = torch.cat([hidden[:, :-1], patched[:, None]], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook)
    gen = torch.Generator().manual_seed(seed)
    inputs = task.inputs("clean")
    loss = torch.tensor(0.0)
    start = time.perf_counter()
    try:
        for _ in range(steps):
            idx = torch.randperm(len(task), generator=gen)[:batch]
            state["src"] = source[idx]
            logits = model.hf(**{k: v[idx] for k, v in inputs.items()}).logits[:, -1]
            loss = F.cross_entropy(logits, task.wrong[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        handle.remove()
        for p in model.hf.parameters():
            p.requires_grad_(True)
    return time.perf_counter() - start, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="blocks.21.resid_post")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    model = ls.load(args.model)
    task, _ = ioi_position_tasks(model, n=args.batch * 4, n_test=2)
    print(
        f"{model.cfg.name}: {args.site}, batch {args.batch} x {task.clean.shape[1]} tokens, "
        f"{args.steps} steps, {torch.get_num_threads()} threads"
    )
    base_s, base_loss = baseline(model, task, args.site, args.steps, args.batch, 0.01, 0)
    start = time.perf_counter()
    problem = site_problem(model, task, args.site)  # the one-off caching run is part of lmscope's time
    epochs = max(1, args.steps * args.batch // len(task))
    _, history = train_subspace(problem, 1, epochs=epochs, lr=0.01, batch_size=args.batch, progress=False)
    ours_s = time.perf_counter() - start
    ours_steps = epochs * -(-len(task) // args.batch)
    print(f"{'method':28s} {'steps':>6s} {'seconds':>8s} {'steps/s':>8s}")
    print(f"{'forward hook, whole model':28s} {args.steps:6d} {base_s:8.2f} {args.steps / base_s:8.2f}")
    print(f"{'lmscope (cached prefix)':28s} {ours_steps:6d} {ours_s:8.2f} {ours_steps / ours_s:8.2f}")
    print(
        f"speed-up: {(ours_steps / ours_s) / (args.steps / base_s):.1f}x (target >= 2x); "
        f"final losses {base_loss:.3f} / {history[-1]:.3f}"
    )


if __name__ == "__main__":
    main()
