"""Gemma, Gemma 2 and Gemma 3 (text): Llama's module names, with these differences.

All three:
  * the embedding is multiplied by sqrt(d_model) inside `model.embed_tokens`. The `embed` site is that
    module's output, i.e. the scaled embedding: exactly what enters block 0 (embed == blocks.0.resid_pre).
    model.weights.W_E is the scaled table (a copy), so W_E[tokens] == embed; cfg.embed_scale records the factor.
  * RMSNorm scales by (1 + w). model.weights.ln1_w/ln2_w/ln_final_w (and the post-norms') return the
    effective scale 1 + w (a copy), so x_normed = x / rms(x) * ln1_w as for Llama; cfg.norm_offset = 1.
  * the MLP is gated with a tanh-approximated GELU (cfg.act_fn).
Gemma 2 and Gemma 3 (cfg.norm_placement = "sandwich"):
  * a post-norm on each sublayer's output: post_attention_layernorm after self_attn and
    post_feedforward_layernorm after the MLP; the MLP's pre-norm is pre_feedforward_layernorm (ln2).
    attn.out / mlp.out are the post-norms' outputs (what is added to the residual), so
    resid_mid = resid_pre + attn.out and resid_post = resid_mid + mlp.out; attn.z @ W_O is the input of the
    post-norm, not attn.out.
  * queries are scaled by query_pre_attn_scalar ** -0.5 (cfg.attn_scale), not d_head ** -0.5.
  * sliding-window attention on the layers `config.layer_types` marks (cfg.sliding_layers).
  * final logit soft-capping c * tanh(logits / c) after lm_head: the `logits` site is read from the model's
    output, so it is the final capped logits (logits = softcap(final.norm @ W_U)).
Gemma 2 only: attention-score soft-capping before the mask (cfg.attn_softcap; attn.pattern includes it).
Gemma 3 only: a per-head RMSNorm (1 + w) on queries and keys (q_norm / k_norm) after the projection and
  before the rotary embedding; attn.q / attn.k are read before it (see qwen.py); sliding layers use their
  own rotary base (rope_local_base_freq).
"""

from __future__ import annotations

from .llama import llama_like


def _facts(hf_config) -> dict:
    facts = dict(norm_offset=1.0, embed_scale=hf_config.hidden_size**0.5)
    scalar = getattr(hf_config, "query_pre_attn_scalar", None)
    if scalar is not None:
        facts["attn_scale"] = scalar**-0.5
    facts["logit_softcap"] = getattr(hf_config, "final_logit_softcapping", None)
    facts["attn_softcap"] = getattr(hf_config, "attn_logit_softcapping", None)
    return facts


def _gemma3_facts(hf_config) -> dict:
    return {**_facts(hf_config), "attn_softcap": None}  # Gemma 3 keeps the field but does not use it


GEMMA = llama_like(
    "gemma",
    ("gemma",),
    notes="embed is scaled by sqrt(d_model); norms scale by (1 + w).",
    config_facts=_facts,
)
GEMMA2 = llama_like(
    "gemma2",
    ("gemma2",),
    notes="sandwich norms: attn.out/mlp.out are after the post-norms; logits are soft-capped; sliding layers.",
    norm_placement="sandwich",
    config_facts=_facts,
)
GEMMA3 = llama_like(
    "gemma3_text",
    ("gemma3_text",),
    notes="sandwich norms; per-head q/k norms after attn.q/attn.k; sliding layers; embed scaled by sqrt(d_model).",
    norm_placement="sandwich",
    qk_norm="head",
    config_facts=_gemma3_facts,
)
