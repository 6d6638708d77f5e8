"""Sparse autoencoders: train, evaluate, inspect and use dictionary features.

from lmscope.features.sae import TopKConfig, RowSource, train_sae, load_sae
sae = train_sae(TopKConfig(d_in=576, d_sae=4608, k=32, site="blocks.15.resid_post"), source, "runs/sae")
sae = load_sae("runs/sae"); f = sae.encode(x); x_hat = sae.decode(f)
"""

from .compare import LayerComparison, compare_saes
from .config import (
    CONFIGS,
    BatchTopKConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    SAEConfig,
    StandardConfig,
    TopKConfig,
    config_class,
    sae_config,
)
from .evaluate import SAEEval, evaluate_sae, explained_variance, reconstruction_metrics, splice, zero_ablate
from .features import FeatureActivations, ablate_feature, feature_cards, logit_effects, steer
from .io import load_sae, save_sae
from .model import SAE
from .sources import IteratorSource, ModelSource, RowSource
from .train import Trainer, geometric_median, train_sae

__all__ = [
    "CONFIGS",
    "FeatureActivations",
    "LayerComparison",
    "SAEEval",
    "ablate_feature",
    "compare_saes",
    "evaluate_sae",
    "explained_variance",
    "feature_cards",
    "logit_effects",
    "reconstruction_metrics",
    "splice",
    "steer",
    "zero_ablate",
    "SAE",
    "BatchTopKConfig",
    "IteratorSource",
    "JumpReLUConfig",
    "MatryoshkaConfig",
    "ModelSource",
    "RowSource",
    "SAEConfig",
    "StandardConfig",
    "TopKConfig",
    "Trainer",
    "config_class",
    "geometric_median",
    "load_sae",
    "sae_config",
    "save_sae",
    "train_sae",
]
