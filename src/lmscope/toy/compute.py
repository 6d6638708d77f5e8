"""Computation in superposition (Elhage et al. 2022): m ReLU neurons computing |x_i| for n features.

Computing |x| = ReLU(x) + ReLU(-x) exactly takes two neurons per feature, so with dense inputs m neurons
compute about m / 2 features, one clean pair of neurons each. With sparse inputs the model computes more
features than it has neurons: neurons become polysemantic, each reading several features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .models import AbsModel, importance_decay
from .sweep import PAPER_SPARSITIES, check_sparsities, replicate_probabilities, run_config, train_best_of


@torch.no_grad()
def abs_gains(model: AbsModel, n_points: int = 41) -> Tensor:
    """How much of |x_i| each feature's output carries, per sign, with the feature alone: [inst, n, 2].

    Input v·e_i for v on ``n_points`` points in [-1, 1]; the gain of a side (0: v < 0, 1: v > 0) is the
    least-squares slope of y'_i against |v| there. 1 on both sides: |x_i| computed; 1 on one side only: one
    neuron computes ReLU(x_i) (or ReLU(-x_i)); 0: a constant output, the feature is ignored.
    """
    n, values = model.n_features, torch.linspace(-1, 1, n_points, device=model.b.device)
    # [inst, n * n_points, n]: block j of the batch holds feature j at every value, the other features 0
    x = torch.kron(torch.eye(n, device=model.b.device), values[:, None]).expand(model.n_instances, -1, -1)
    out = model(x.contiguous()).reshape(model.n_instances, n, n_points, n)
    own = torch.diagonal(out, dim1=1, dim2=3)  # [inst, n_points, n]: output j on its own input
    gains = []
    for side in (values < 0, values > 0):
        a = values[side].abs() - values[side].abs().mean()  # centred |v|
        y = own[:, side] - own[:, side].mean(1, keepdim=True)
        gains.append((a[None, :, None] * y).sum(1) / a.pow(2).sum())
    return torch.stack(gains, dim=-1).cpu()


@dataclass
class AbsSweep:
    """The best trained ``AbsModel`` instance per sparsity.

    W1: [k, m, n]; W2: [k, n, m]; b: [k, n]; loss: [k]; gains: [k, n, 2] from :func:`abs_gains`.
    A feature's side (sign) counts as computed when its gain exceeds ``threshold`` (0.5).
    """

    n_features: int
    n_hidden: int
    sparsities: list[float]
    importance: list[float]
    W1: Tensor
    W2: Tensor
    b: Tensor
    loss: Tensor
    gains: Tensor
    config: dict = field(default_factory=dict)

    def sides(self, threshold: float = 0.5) -> Tensor:
        """[k, n] how many signs of each feature are computed: 0, 1 (one neuron, half of |x|) or 2."""
        return (self.gains > threshold).sum(-1)

    def n_computed(self, threshold: float = 0.5) -> Tensor:
        """[k] features with |x_i| computed on both signs."""
        return (self.sides(threshold) == 2).sum(-1)

    def n_used(self, threshold: float = 0.5) -> Tensor:
        """[k] features computed on at least one sign. Above m, the neurons serve more features than they
        number: superposition (a monosemantic model needs a neuron per sign per feature)."""
        return (self.sides(threshold) > 0).sum(-1)

    def features_per_neuron(self, threshold: float = 0.5) -> Tensor:
        """[k, m] features each neuron reads with a weight of |W1| > ``threshold`` (above 1: polysemantic)."""
        return (self.W1.abs() > threshold).sum(-1)

    def to_dict(self) -> dict:
        return {
            "n_features": self.n_features,
            "n_hidden": self.n_hidden,
            "sparsities": self.sparsities,
            "importance": self.importance,
            "n_computed": self.n_computed().tolist(),
            "n_used": self.n_used().tolist(),
            "sides": self.sides().tolist(),
            "features_per_neuron": self.features_per_neuron().tolist(),
            "gains": self.gains.tolist(),
            "loss": self.loss.tolist(),
            "W1": self.W1.tolist(),
            "W2": self.W2.tolist(),
            "b": self.b.tolist(),
            "config": self.config,
        }


def abs_sweep(
    n_features: int = 20,
    n_hidden: int = 6,
    sparsities: object = PAPER_SPARSITIES,
    importance: float = 0.9,
    n_seeds: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **train_config: object,
) -> AbsSweep:
    """Train y' = ReLU(W₂ ReLU(W₁x) + b) on |x| at each sparsity (``n_seeds`` replicates, one batched model).

    ``importance``: decay d of I_i = d**i (ARENA's version: n = 100, m = 40, d = 0.8; smaller by default).
    ``train_config``: fields of :class:`TrainConfig` (steps, batch_size, lr, ...).
    """
    sparsities = check_sparsities(sparsities)
    imp = importance_decay(n_features, importance)
    model = AbsModel(n_features, n_hidden, replicate_probabilities(sparsities, n_seeds), imp, seed=seed)
    model = model.to(device)
    best, losses, _ = train_best_of(model, n_seeds, progress, seed=seed, **train_config)
    return AbsSweep(
        n_features,
        n_hidden,
        sparsities,
        imp.tolist(),
        model.W1.detach().cpu()[best],
        model.W2.detach().cpu()[best],
        model.b.detach().cpu()[best],
        losses.min(dim=1).values,
        abs_gains(model)[best],
        run_config(n_seeds, seed, train_config),
    )
