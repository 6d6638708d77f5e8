"""Toy models of superposition (Elhage et al. 2022): models, training, measures, phase diagram, |x| model.

    from lmscope.toy import sparsity_sweep, measures
    sweep = sparsity_sweep(n_features=5, n_hidden=2, sparsities=[0, 0.9, 0.99])   # the paper's recipe
    sweep.n_represented()                  # features with ‖W_i‖ > 0.5 at each sparsity
    measures.feature_dimensionality(sweep.W)

Every model holds many independent instances (one per sparsity, importance or seed) in one tensor
with the instance first: W [inst, m, n], batches [inst, batch, n].
"""

from . import measures
from .compute import AbsSweep, abs_gains, abs_sweep
from .measures import (
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    gram,
    interference,
    n_represented,
)
from .models import AbsModel, ToyModel, importance_decay
from .phase import REGIMES, PhaseDiagram, classify, phase_diagram
from .report import ToyResults, run_toy, save_toy_run, toy_report_html
from .sweep import PAPER_SPARSITIES, SparsitySweep, sparsity_sweep
from .train import TrainConfig, TrainLog, evaluate, train

__all__ = [
    "PAPER_SPARSITIES",
    "REGIMES",
    "AbsModel",
    "AbsSweep",
    "PhaseDiagram",
    "SparsitySweep",
    "ToyModel",
    "ToyResults",
    "TrainConfig",
    "TrainLog",
    "abs_gains",
    "abs_sweep",
    "classify",
    "dimensions_per_feature",
    "evaluate",
    "feature_dimensionality",
    "feature_norms",
    "gram",
    "importance_decay",
    "interference",
    "measures",
    "n_represented",
    "phase_diagram",
    "run_toy",
    "save_toy_run",
    "sparsity_sweep",
    "toy_report_html",
    "train",
]
