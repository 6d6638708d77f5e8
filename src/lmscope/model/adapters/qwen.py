"""Qwen2 and Qwen3: Llama's layout and module names (every site is read where llama.py says), with:

qwen2: biases on q_proj/k_proj/v_proj (b_Q, b_K, b_V in model.weights); optional sliding-window layers
       (`layer_types`, recorded in cfg.sliding_layers).
qwen3: no q/k/v biases, but an RMSNorm on each head's query and key (`self_attn.q_norm` / `k_norm`, over
       d_head) after the projection and before the rotary embedding. attn.q / attn.k are the projections'
       outputs, before these norms (so attn.q = norm1(resid_pre) @ W_Q as in every family); the norms'
       weights are model.weights.q_norm_w(l) / k_norm_w(l) [d_head].
"""

from .llama import llama_like

QWEN2 = llama_like(
    "qwen2",
    ("qwen2",),
    notes="Llama layout with q/k/v biases; attn.q/attn.k are pre-rotary.",
)
QWEN3 = llama_like(
    "qwen3",
    ("qwen3",),
    notes="attn.q/attn.k are read before the per-head q/k RMSNorm and the rotary embedding.",
    qk_norm="head",
)
