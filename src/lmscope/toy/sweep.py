"""Sweeps over sparsity: the paper's main experiments, each one batched model with one instance per
(sparsity, replicate), keeping per sparsity the replicate with the lowest loss.

Replicates guard against the local minima the paper warns about (e.g. a square of 4 features where a
pentagon of 5 has lower loss): the same problem is trained from ``n_seeds`` initialisations at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from . import measures as M
from .models import ToyModel, importance_decay
from .train import TrainConfig, TrainLog, evaluate, train

PAPER_SPARSITIES = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999)


def check_sparsities(sparsities: object) -> list[float]:
    values = [float(s) for s in sparsities]
    if not values:
        raise ValueError("give at least one sparsity")
    bad = [s for s in values if not 0 <= s < 1]
    if bad:
        raise ValueError(
            f"sparsities must lie in [0, 1) (S = 1 would mean no feature is ever present); got {bad}"
        )
    return values


def replicate_probabilities(sparsities: list[float], n_seeds: int) -> Tensor:
    """1 - S for every instance, sparsity-major: instance k * n_seeds + r is replicate r of sparsity k. [inst]"""
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be at least 1; got {n_seeds}")
    return (1 - torch.tensor(sparsities, dtype=torch.float32)).repeat_interleave(n_seeds)


def train_best_of(
    model: nn.Module, n_seeds: int, progress: bool = False, **train_config: object
) -> tuple[Tensor, Tensor, TrainLog]:
    """Train ``model`` (instances grouped by ``n_seeds`` consecutive replicates) and pick the best of each group.

    Returns (best instance index [groups], evaluated loss of every replicate [groups, n_seeds], the log).
    """
    log = train(model, progress=progress, **train_config)
    losses = evaluate(model).cpu().reshape(-1, n_seeds)
    best = losses.argmin(dim=1) + torch.arange(len(losses)) * n_seeds
    return best, losses, log


def run_config(n_seeds: int, seed: int, train_config: dict) -> dict:
    """The training settings of a sweep as plain numbers (for its JSON and report)."""
    return {**asdict(TrainConfig(seed=seed, **train_config)), "n_seeds": n_seeds}


@dataclass
class SparsitySweep:
    """The best trained ``ToyModel`` instance per sparsity.

    W: [k, m, n]; b: [k, n]; loss: [k] its evaluated loss; replicate_loss: [k, n_seeds].
    """

    n_features: int
    n_hidden: int
    activation: str
    sparsities: list[float]
    importance: list[float]
    W: Tensor
    b: Tensor
    loss: Tensor
    replicate_loss: Tensor
    config: dict = field(default_factory=dict)

    def n_represented(self, threshold: float = 0.5) -> Tensor:
        """[k] features with ‖W_i‖ > threshold at each sparsity."""
        return M.n_represented(self.W, threshold)

    def measures(self) -> list[dict]:
        """Per sparsity, every measure of :func:`lmscope.toy.measures.summarize` plus sparsity and loss."""
        rows = M.summarize(self.W, self.b)
        for row, s, loss in zip(rows, self.sparsities, self.loss.tolist()):
            row.update(sparsity=s, loss=loss)
        return rows

    def to_dict(self) -> dict:
        return {
            "n_features": self.n_features,
            "n_hidden": self.n_hidden,
            "activation": self.activation,
            "sparsities": self.sparsities,
            "importance": self.importance,
            "replicate_loss": self.replicate_loss.tolist(),
            "config": self.config,
            "instances": self.measures(),
        }


def sparsity_sweep(
    n_features: int = 5,
    n_hidden: int = 2,
    sparsities: object = PAPER_SPARSITIES,
    importance: float = 0.9,
    activation: str = "relu",
    n_seeds: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **train_config: object,
) -> SparsitySweep:
    """Train x' = act(WᵀWx + b) at each sparsity S (``n_seeds`` replicates each, one batched model).

    ``importance``: the decay d of the paper's profile I_i = d**i (1.0: all features equal). ``seed`` fixes
    the initialisation and the data; ``train_config``: fields of :class:`TrainConfig` (steps, batch_size,
    lr, ...), whose defaults are the paper's recipe.
    """
    sparsities = check_sparsities(sparsities)
    imp = importance_decay(n_features, importance)
    model = ToyModel(
        n_features,
        n_hidden,
        replicate_probabilities(sparsities, n_seeds),
        imp,
        activation=activation,
        seed=seed,
    ).to(device)
    best, losses, _ = train_best_of(model, n_seeds, progress, seed=seed, **train_config)
    config = run_config(n_seeds, seed, train_config)
    return SparsitySweep(
        n_features,
        n_hidden,
        activation,
        sparsities,
        imp.tolist(),
        model.W.detach().cpu()[best],
        model.b.detach().cpu()[best],
        losses.min(dim=1).values,
        losses,
        config,
    )
