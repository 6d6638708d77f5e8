"""The 2-feature / 1-dimension phase diagram (Elhage et al. 2022, "Phase change").

n = 2 features share m = 1 hidden dimension. Feature 1 has importance 1; the "extra" feature 2 has relative
importance r. Over a grid of density (1 - S) and r, each trained model falls in one of the paper's regimes,
named from feature 2's point of view:

- "not learned": ‖W_2‖ small; feature 1 keeps the dimension (dense data, r < 1)
- "dedicated":   feature 2 gets the dimension to itself, feature 1 is dropped (dense data, r > 1)
- "antipodal":   both are stored, W = [w, -w] with |w| near 1 (an antipodal pair: superposition, the
                 one dimension holds more than one feature: ‖W‖²_F > 1.5, D* < 2/3; sparse data, r near 1)
- "other":       anything else: both near zero, both with the same sign (a poor local minimum), or one
                 direction merely mixing the two (‖W‖²_F near 1: for dense data at r = 1 every rotation
                 of the single kept direction costs the same)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .models import ToyModel
from .sweep import run_config, train_best_of

REGIMES = ("not learned", "dedicated", "antipodal", "other")
DEFAULT_DENSITIES = tuple(float(f"{10**e:.3g}") for e in torch.linspace(0, -2, 7).tolist())  # 1 .. 0.01
DEFAULT_IMPORTANCES = tuple(float(f"{10**e:.3g}") for e in torch.linspace(-1, 1, 7).tolist())  # 0.1 .. 10


def classify(W: Tensor, threshold: float = 0.5) -> list[str]:
    """The regime of each 2-feature, 1-dimension embedding. W: [k, 1, 2] (or [k, 2]) -> k names in REGIMES.

    A feature is stored when |w_i| > ``threshold``; see the module docstring for the regimes.
    """
    w = torch.as_tensor(W, dtype=torch.float32).reshape(-1, 2)
    names = []
    for w1, w2 in w.tolist():
        if abs(w2) <= threshold:
            names.append("not learned" if abs(w1) > threshold else "other")
        elif abs(w1) <= threshold:
            names.append("dedicated")
        else:
            pair = w1 * w2 < 0 and w1 * w1 + w2 * w2 > 1.5
            names.append("antipodal" if pair else "other")
    return names


@dataclass
class PhaseDiagram:
    """Rows: densities (1 - S); columns: relative importances of feature 2. Best replicate per cell.

    W: [rows, cols, 2] (the one hidden dimension's weights on features 1 and 2); b: [rows, cols, 2];
    loss: [rows, cols]; regimes: [rows][cols] names from REGIMES.
    """

    densities: list[float]
    importances: list[float]
    W: Tensor
    b: Tensor
    loss: Tensor
    regimes: list[list[str]]
    config: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """How many cells fall in each regime."""
        flat = [r for row in self.regimes for r in row]
        return {name: flat.count(name) for name in REGIMES}

    def to_dict(self) -> dict:
        return {
            "densities": self.densities,
            "importances": self.importances,
            "regimes": self.regimes,
            "counts": self.counts(),
            "W": self.W.tolist(),
            "b": self.b.tolist(),
            "loss": self.loss.tolist(),
            "config": self.config,
        }


def phase_diagram(
    densities: object = DEFAULT_DENSITIES,
    importances: object = DEFAULT_IMPORTANCES,
    n_seeds: int = 6,
    threshold: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **train_config: object,
) -> PhaseDiagram:
    """Train one ReLU model per (density, importance, replicate), all in one batch, and classify each cell.

    densities: 1 - S per row, in (0, 1]; importances: feature 2's importance per column (feature 1 has 1).
    Each cell keeps the replicate with the lowest evaluated loss. In sparse cells, an initialisation whose two
    weights share a sign mostly ends in a local minimum (one feature's ReLU dies before the pair can form), so
    replicates come in pairs that differ in the sign of feature 2's initial weight: every pair tries both.
    Even so a few percent of opposite-sign starts get stuck too; 6 replicates (3 pairs) make a wrong cell rare.
    ``train_config``: fields of :class:`TrainConfig` (steps, batch_size, lr, ...).
    """
    dens = [float(d) for d in densities]
    imps = [float(r) for r in importances]
    if not dens or not imps:
        raise ValueError("give at least one density and one importance")
    if any(not 0 < d <= 1 for d in dens) or any(r <= 0 for r in imps):
        raise ValueError(f"densities must lie in (0, 1] and importances be positive; got {dens} and {imps}")
    rows, cols = len(dens), len(imps)
    # instance (i, j, r) = row i, column j, replicate r, flattened in that order
    p = torch.tensor(dens)[:, None, None].expand(rows, cols, n_seeds).reshape(-1)
    imp2 = torch.tensor(imps)[None, :, None].expand(rows, cols, n_seeds).reshape(-1)
    importance = torch.stack([torch.ones_like(imp2), imp2], dim=1)  # [inst, 2]
    model = ToyModel(2, 1, p, importance, seed=seed)
    with torch.no_grad():  # odd replicates: feature 2's initial weight negated (see the docstring)
        model.W.view(rows, cols, n_seeds, 2)[:, :, 1::2, 1] *= -1
    model = model.to(device)
    best, losses, _ = train_best_of(model, n_seeds, progress, seed=seed, **train_config)
    W = model.W.detach().cpu()[best]  # [rows * cols, 1, 2]
    return PhaseDiagram(
        dens,
        imps,
        W.reshape(rows, cols, 2),
        model.b.detach().cpu()[best].reshape(rows, cols, 2),
        losses.min(dim=1).values.reshape(rows, cols),
        [classify(W[i * cols : (i + 1) * cols], threshold) for i in range(rows)],
        run_config(n_seeds, seed, train_config),
    )
