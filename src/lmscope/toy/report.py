"""`lmscope toy`: train the paper's experiments and write a run folder (kind "toy").

The folder holds ``toy.json`` (every number: weights, measures, phase diagram, |x| model), ``report.html``
(feature norms, WᵀW heatmaps per sparsity, the 2-d geometry, the phase diagram, the |x| model), and
``run.json``, written last.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..report import Text, heatmap, line_chart, page, save_page, table
from ..runs import write_json, write_run
from . import measures as M
from . import plots
from .compute import AbsSweep, abs_sweep
from .phase import PhaseDiagram, phase_diagram
from .sweep import PAPER_SPARSITIES, SparsitySweep, sparsity_sweep
from .train import TrainConfig

# --fast: ~10x quicker than the paper's recipe (a higher lr with cosine decay converges in fewer steps)
FAST_RECIPE = {"steps": 2000, "batch_size": 512, "lr": 1e-2, "schedule": "cosine"}


@dataclass
class ToyOptions:
    """What `lmscope toy` sets (run_toy's defaults are these; training's are TrainConfig's)."""

    n_features: int = field(default=5, metadata={"flag": "--n", "help": "features"})
    n_hidden: int = field(default=2, metadata={"flag": "--m", "help": "hidden dimensions"})
    sparsities: tuple[float, ...] = field(
        default=PAPER_SPARSITIES, metadata={"flag": "--sparsity", "help": "sparsities S in [0, 1)"}
    )
    importance: float = field(default=0.9, metadata={"help": "importance decay: I_i = d**i"})
    n_seeds: int = field(
        default=2, metadata={"flag": "--seeds", "help": "replicates per sparsity, best kept (phase: >= 6)"}
    )
    steps: int | None = field(
        default=None, metadata={"help": f"training steps (default {TrainConfig.steps}, the paper's)"}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": f"batch size (default {TrainConfig.batch_size})"}
    )
    lr: float | None = field(
        default=None, metadata={"help": f"AdamW learning rate (default {TrainConfig.lr})"}
    )
    fast: bool = field(
        default=False,
        metadata={"help": ", ".join(f"{k} {v}" for k, v in FAST_RECIPE.items()) + ": ~10x quicker"},
    )
    phase: bool = field(default=True, metadata={"help": "skip the 2-feature phase diagram"})
    compute: bool = field(default=True, metadata={"help": "skip the |x| computation model"})
    seed: int = 0
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cuda"})
    out: str = field(default="toy_run", metadata={"help": "run folder to write"})

    def train_config(self) -> dict:
        """TrainConfig fields to override: the fast recipe (with --fast), then steps/batch_size/lr given."""
        recipe = dict(FAST_RECIPE) if self.fast else {}
        given = {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr}
        return {**recipe, **{k: v for k, v in given.items() if v is not None}}


@dataclass
class ToyResults:
    """Everything ``lmscope toy`` trains: ReLU and linear sweeps over sparsity, the phase diagram, |x|."""

    relu: SparsitySweep
    linear: SparsitySweep
    phase: PhaseDiagram | None = None
    compute: AbsSweep | None = None

    def to_dict(self) -> dict:
        return {
            "relu": self.relu.to_dict(),
            "linear": self.linear.to_dict(),
            "phase": None if self.phase is None else self.phase.to_dict(),
            "compute": None if self.compute is None else self.compute.to_dict(),
        }

    def to_html(self) -> str:
        return toy_report_html(self)


def run_toy(
    n_features: int = ToyOptions.n_features,
    n_hidden: int = ToyOptions.n_hidden,
    sparsities: object = ToyOptions.sparsities,
    importance: float = ToyOptions.importance,
    n_seeds: int = ToyOptions.n_seeds,
    phase: bool = ToyOptions.phase,
    compute: bool = ToyOptions.compute,
    seed: int = ToyOptions.seed,
    device: str | torch.device = ToyOptions.device,
    progress: bool = True,
    **train_config: object,
) -> ToyResults:
    """Train the ReLU and linear sweeps (n features, m hidden dims), and optionally the 2-feature phase
    diagram (7 x 7 cells, at least 6 replicates each) and the |x| computation model (20 features, 6 neurons).

    ``train_config``: fields of :class:`lmscope.toy.TrainConfig` (steps, batch_size, lr, ...), shared by all.
    """
    common = dict(seed=seed, device=device, progress=progress, **train_config)
    sweep = dict(n_features=n_features, n_hidden=n_hidden, sparsities=sparsities, importance=importance)
    relu = sparsity_sweep(**sweep, activation="relu", n_seeds=n_seeds, **common)
    linear = sparsity_sweep(**sweep, activation="linear", n_seeds=n_seeds, **common)
    phases = phase_diagram(n_seeds=max(n_seeds, 6), **common) if phase else None
    abs_model = abs_sweep(20, 6, sparsities, n_seeds=n_seeds, **common) if compute else None
    return ToyResults(relu, linear, phases, abs_model)


def save_toy_run(results: ToyResults, out_dir: str | os.PathLike) -> Path:
    """Write ``toy.json``, ``report.html`` and (last) ``run.json`` into ``out_dir``; returns the folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder for the run")
    write_json(out / "toy.json", results.to_dict())
    save_page(results.to_html(), out / "report.html")
    relu = results.relu
    write_run(
        out,
        "toy",
        f"Toy models of superposition: n={relu.n_features}, m={relu.n_hidden}",
        n_features=relu.n_features,
        n_hidden=relu.n_hidden,
        sparsities=relu.sparsities,
        n_represented=relu.n_represented().tolist(),
    )
    return out


def _side_by_side(figures: list) -> str:
    """Small figures in a wrapping row (HTML), instead of one under the other."""
    cells = "".join(f'<figure style="margin:0">{f.svg}</figure>' for f in figures)
    return f'<div style="display:flex;flex-wrap:wrap;gap:12px">{cells}</div>'


def _s(s: float) -> str:
    return f"S={s:g}"


def _sweep_table(sweep: SparsitySweep) -> str:
    rows = []
    for r in sweep.measures():
        rows.append(
            {
                "sparsity S": r["sparsity"],
                "1 - S": 1 - r["sparsity"],
                "represented (‖W_i‖ > 0.5)": r["n_represented"],
                "D* = m/‖W‖²_F": r["dimensions_per_feature"],
                "biases < -0.01": sum(b < -0.01 for b in r["bias"]),
                "loss": r["loss"],
            }
        )
    return table(rows, float_format="{:.4g}")


def _sweep_sections(sweep: SparsitySweep, name: str) -> list:
    titles = [_s(s) for s in sweep.sparsities]

    parts = [
        _sweep_table(sweep),
        plots.feature_bars(
            M.feature_norms(sweep.W),
            M.interference(sweep.W),
            titles,
            f"{name}: feature norms ‖W_i‖, coloured by interference",
        ),
    ]
    if sweep.n_hidden == 2:
        parts.append(
            plots.feature_geometry(sweep.W, titles, f"{name}: feature directions W_i in the 2-d hidden space")
        )
    labels = [str(i) for i in range(sweep.n_features)]
    cell = max(6.0, min(30.0, 240 / sweep.n_features))
    grams = [
        heatmap(G, labels, labels, title=f"{name} WᵀW at {_s(s)}", cell_size=cell)
        for s, G in zip(sweep.sparsities, M.gram(sweep.W))
    ]
    parts.append(_side_by_side(grams))
    return parts


def toy_report_html(results: ToyResults) -> str:
    """The run's ``report.html``: overview charts, each model's pictures, the phase diagram, the |x| model."""
    sections = [*_overview_sections(results.relu, results.linear)]
    sections += [("ReLU model", _sweep_sections(results.relu, "ReLU"))]
    sections += [("Linear model", _sweep_sections(results.linear, "linear"))]
    if results.phase is not None:
        sections.append(("Phase diagram: 2 features, 1 dimension", _phase_sections(results.phase)))
    if results.compute is not None:
        sections.append(("Computation in superposition: |x|", _compute_sections(results.compute)))
    return page("Toy models of superposition", sections, subtitle="Elhage et al. 2022, reproduced by lmscope")


def _overview_sections(relu: SparsitySweep, linear: SparsitySweep) -> list:
    cfg = relu.config
    decay = f"{relu.importance[1]:.3g}^i" if relu.n_features > 1 else "1"
    intro = Text(
        f"x' = ReLU(WᵀWx + b) and its linear baseline x' = WᵀWx + b, with n = {relu.n_features} features in "
        f"m = {relu.n_hidden} hidden dimensions and importance I_i = {decay}. Each feature is 0 with probability "
        f"S, else uniform in [0, 1]. Each sparsity keeps the best of {cfg['n_seeds']} replicates; training: "
        f"{cfg['steps']} steps of AdamW (lr {cfg['lr']}, {cfg['schedule']} schedule), batch {cfg['batch_size']}."
        "\n\nThe linear model keeps the m most important features orthogonally, like PCA. With a ReLU and "
        "sparse features the model stores more features than dimensions (superposition), at the price of "
        "interference, which it filters with negative biases."
    )
    x = [math.log10(1 / (1 - s)) for s in relu.sparsities]
    represented = {
        "ReLU": relu.n_represented().tolist(),
        "linear": linear.n_represented().tolist(),
        "m": [relu.n_hidden] * len(x),
    }
    d_star = {"ReLU D*": M.dimensions_per_feature(relu.W), "linear D*": M.dimensions_per_feature(linear.W)}
    axis = {"x": x, "xlabel": "log10 1/(1 - S)"}
    return [
        ("Setup", intro),
        ("Features represented", line_chart(represented, title="Features with ‖W_i‖ > 0.5", **axis)),
        ("Dimensions per feature", line_chart(d_star, title="D* = m / ‖W‖²_F", **axis)),
    ]


def _phase_sections(ph: PhaseDiagram) -> list:
    text = Text(
        "Feature 1 has importance 1; the extra feature 2 has the relative importance on the x axis. Not "
        "learned: feature 2 is dropped. Dedicated: feature 2 gets the dimension and feature 1 is dropped. "
        "Antipodal: both share the dimension as W = [w, -w] (superposition). Other: anything else (a poor local "
        f"minimum, or one direction mixing both). Each cell keeps the best of {ph.config['n_seeds']} "
        f"replicates. Counts: {ph.counts()}."
    )
    grid = plots.regime_grid(
        ph.regimes,
        [f"{d:.3g}" for d in ph.densities],
        [f"{r:.3g}" for r in ph.importances],
        "Phase diagram",
        "relative importance of feature 2",
        "density 1 - S",
    )
    return [text, grid]


def _compute_sections(c: AbsSweep) -> list:
    rows = [
        {
            "sparsity S": s,
            "neurons": c.n_hidden,
            "features computed (both signs)": int(k),
            "features used (>= 1 sign)": int(u),
            "max features per neuron": int(f.max()),
            "loss": loss,
        }
        for s, k, u, f, loss in zip(
            c.sparsities,
            c.n_computed().tolist(),
            c.n_used().tolist(),
            c.features_per_neuron(),
            c.loss.tolist(),
        )
    ]
    parts = [
        Text(
            f"y' = ReLU(W₂ ReLU(W₁x) + b) trained on |x| with x_i uniform in [-1, 1] (0 with probability S): "
            f"n = {c.n_features} features, {c.n_hidden} neurons. |x| = ReLU(x) + ReLU(-x) takes a neuron per "
            "sign, so without superposition the neurons serve at most m feature-signs. A sign of a feature counts "
            "as computed when, with that feature alone, the slope of its output against |x| there exceeds 0.5. "
            "With sparse inputs the neurons serve more features than they number, and each neuron reads several "
            "features (polysemantic)."
        ),
        table(rows, float_format="{:.4g}"),
    ]
    feats, neurons = [str(i) for i in range(c.n_features)], [f"neuron {j}" for j in range(c.n_hidden)]
    cell = max(6.0, min(14.0, 400 / c.n_features))
    maps = [
        heatmap(W1, neurons, feats, title=f"W₁ (neurons × features) at {_s(s)}", cell_size=cell)
        for s, W1 in zip(c.sparsities, c.W1)
    ]
    parts.append(_side_by_side(maps))
    return parts
