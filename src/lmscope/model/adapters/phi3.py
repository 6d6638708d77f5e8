"""Phi-3: Llama's layout with two fused projections.

  * `self_attn.qkv_proj` computes [q | k | v] in one output (widths n_heads * d_head, then n_kv_heads * d_head
    twice). attn.q, attn.k and attn.v are its three slices, split into heads (pre-rotary, as for Llama);
    writing one rewrites its slice. model.weights.W_Q/W_K/W_V are the matching row blocks of its weight.
  * `mlp.gate_up_proj` computes [gate | up]: mlp.pre is the gate half, mlp.pre_linear the up half;
    mlp.post = act(gate) * up is the input of `mlp.down_proj` as for Llama. W_gate / W_in are the halves.
  * partial rotary embeddings where `partial_rotary_factor` < 1; dropout on the residual adds (inactive in eval).
Every other site is read where llama.py says.
"""

from __future__ import annotations

from ..config import ModelConfig
from .base import HookSpec, LayerParts, MLPWeights, QKVWeights, concat_specs, in_out_weight
from .llama import llama_like


def qkv_specs(layer: LayerParts, cfg: ModelConfig):
    q, kv = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    pieces = [("attn.q", q, cfg.n_heads), ("attn.k", kv, cfg.n_kv_heads), ("attn.v", kv, cfg.n_kv_heads)]
    return concat_specs(layer.attn.qkv_proj, pieces)


def qkv_weights(layer: LayerParts, cfg: ModelConfig) -> QKVWeights:
    w = in_out_weight(layer.attn.qkv_proj)  # [d_model, (n_heads + 2 n_kv_heads) d_head]
    q, kv = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head

    def per_head(block, n):  # [d_model, n * d_head] -> [n, d_model, d_head]
        return block.unflatten(-1, (n, cfg.d_head)).permute(1, 0, 2)

    return QKVWeights(
        W_Q=per_head(w[:, :q], cfg.n_heads),
        W_K=per_head(w[:, q : q + kv], cfg.n_kv_heads),
        W_V=per_head(w[:, q + kv :], cfg.n_kv_heads),
    )


def mlp_specs(layer: LayerParts, cfg: ModelConfig):
    specs = concat_specs(
        layer.mlp.gate_up_proj, [("mlp.pre", cfg.d_mlp, None), ("mlp.pre_linear", cfg.d_mlp, None)]
    )
    return {**specs, "mlp.post": HookSpec(layer.mlp_down, "in")}


def mlp_weights(layer: LayerParts, cfg: ModelConfig) -> MLPWeights:
    w = in_out_weight(layer.mlp.gate_up_proj)  # [d_model, 2 d_mlp]
    return MLPWeights(W_gate=w[:, : cfg.d_mlp], W_in=w[:, cfg.d_mlp :], W_out=in_out_weight(layer.mlp_down))


ADAPTER = llama_like(
    "phi3",
    ("phi3",),
    notes="fused qkv_proj and gate_up_proj: attn.q/k/v and mlp.pre/pre_linear are slices of their outputs.",
    qkv_specs=qkv_specs,
    qkv_weights=qkv_weights,
    mlp_specs=mlp_specs,
    mlp_weights=mlp_weights,
)
