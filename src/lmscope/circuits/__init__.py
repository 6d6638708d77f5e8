"""Weight-based analysis: logit and tuned lens, QK/OV circuits and copying scores, composition scores and
virtual weights, MLP neurons as key-value memories.

    stats = lens_stats(model, collect_residuals(model, contexts))         # KL / rank per layer, logit lens
    lens = train_tuned_lens(model, collect_residuals(model, train_contexts))
    copying_scores(model)                                                  # [n_layers, n_heads], in [-1, 1]
    ov_circuit(model, 23, 0, [" Mary", " John"], [" Mary", " John"])       # source token -> logits
    composition_scores(model).top("k")                                     # strongest K-composition pairs
    virtual_weights(model, "blocks.3.mlp", "blocks.7.attn.v[1]")          # neurons -> head value input
    key_value_memories(model, 20, [123, 456])                              # triggers and promoted tokens
"""

from .circuits_report import write_circuits_run
from .composition import CompositionScores, composition_scores, random_baseline, virtual_weights
from .lens import (
    LensStats,
    PromptLens,
    ResidualCache,
    TrainConfig,
    TunedLens,
    collect_residuals,
    lens_logits,
    lens_stats,
    prompt_lens,
    train_tuned_lens,
)
from .lens_report import write_lens_run
from .memories import Memory, key_value_memories
from .qkov import copying_score_of, copying_scores, ov_circuit, qk_circuit, token_residuals

__all__ = [
    "CompositionScores",
    "LensStats",
    "Memory",
    "PromptLens",
    "ResidualCache",
    "TrainConfig",
    "TunedLens",
    "collect_residuals",
    "composition_scores",
    "copying_score_of",
    "copying_scores",
    "key_value_memories",
    "lens_logits",
    "lens_stats",
    "ov_circuit",
    "prompt_lens",
    "qk_circuit",
    "random_baseline",
    "token_residuals",
    "train_tuned_lens",
    "virtual_weights",
    "write_circuits_run",
    "write_lens_run",
]
