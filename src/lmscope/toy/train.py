"""Training and evaluating toy models: the paper's recipe, every instance in one optimizer."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass
class TrainLog:
    """steps: [k] the step of each log row; loss: [k, inst] mean training loss over the steps since the last
    row; final_loss: [inst] the loss on a fresh evaluation batch once training ended."""

    steps: list[int]
    loss: Tensor
    final_loss: Tensor

    def to_dict(self) -> dict:
        return {"steps": self.steps, "loss": self.loss.tolist(), "final_loss": self.final_loss.tolist()}


SCHEDULES = {
    "constant": lambda progress: 1.0,
    "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
}


@contextlib.contextmanager
def _one_cpu_thread(model: nn.Module):
    """Run torch on one CPU thread inside the block, then restore the setting.

    The toy tensors are tiny: splitting each op across threads costs far more than it saves (40x slower
    with 2 threads on a busy 2-core machine), so training and evaluation on the CPU use one thread.
    """
    before = torch.get_num_threads()
    if next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, n_examples: int = 65536, seed: int = 1234, chunk: int = 4096) -> Tensor:
    """Per-instance loss [inst] on ``n_examples`` fresh examples (drawn with ``seed``, ``chunk`` at a time).

    Many examples, because at high sparsity few of them hold a non-zero feature, and the losses of two
    instances (a good and a stuck one) must be told apart reliably.
    """
    generator, total = _generator(model, seed), 0.0
    with _one_cpu_thread(model):
        for start in range(0, n_examples, chunk):
            size = min(chunk, n_examples - start)
            x = model.generate_batch(size, generator)
            total = total + model.loss(x, model(x)) * size
    return total / n_examples


@dataclass
class TrainConfig:
    """The paper's recipe by default: AdamW (lr 1e-3, torch's default weight decay 0.01, as in the official
    notebook), fresh batches of 1024 every step, 10k steps, constant learning rate.

    schedule: "constant" or "cosine" (decay to 0: converges in fewer steps at a higher lr).
    seed: fixes the data stream (the initialisation has the model's own seed).
    """

    steps: int = 10_000
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "constant"
    seed: int = 0
    log_every: int = 100

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError(
                f"steps, batch_size and log_every must be positive; got {self.steps}, {self.batch_size}, "
                f"{self.log_every}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {tuple(SCHEDULES)}; got {self.schedule!r}")


def train(model: nn.Module, progress: bool = False, **config: object) -> TrainLog:
    """Train ``model`` (a ``ToyModel`` or ``AbsModel``) in place; ``config``: fields of :class:`TrainConfig`.

    The loss summed over instances is minimised: each instance's gradient is that of its own loss, so the
    instances train independently (Adam's step is per element too). On the CPU it runs on one thread
    (restored afterwards): these tensors are too small to gain from more.
    """
    cfg = TrainConfig(**config)
    # fused: one kernel for the whole update; the toy tensors are so small that per-op overhead dominates
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    decay = SCHEDULES[cfg.schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay(step / cfg.steps))
    generator = _generator(model, cfg.seed)
    logged_steps, rows = [], []
    running = torch.zeros(model.n_instances, device=next(model.parameters()).device)
    with _one_cpu_thread(model):
        for step in tqdm(range(1, cfg.steps + 1), desc="toy model", disable=not progress, leave=False):
            x = model.generate_batch(cfg.batch_size, generator)
            loss = model.loss(x, model(x))  # [inst]
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            scheduler.step()
            running += loss.detach()
            if step % cfg.log_every == 0 or step == cfg.steps:
                count = step - (logged_steps[-1] if logged_steps else 0)
                logged_steps.append(step)
                rows.append((running / count).cpu())
                running.zero_()
    return TrainLog(logged_steps, torch.stack(rows), evaluate(model).cpu())
