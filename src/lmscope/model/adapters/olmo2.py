"""OLMo-2: Llama's module names, but the norms come after each sublayer instead of before it
(cfg.norm_placement = "post"):

    resid_mid  = resid_pre + post_attention_layernorm(self_attn(resid_pre))
    resid_post = resid_mid + post_feedforward_layernorm(mlp(resid_mid))

so attention and the MLP read the raw residual (model.weights.ln1_w / ln2_w are None), attn.out / mlp.out
are the post-norms' outputs (what is added to the residual), and model.weights.ln1_post_w / ln2_post_w hold
the post-norms' scales. Queries and keys get an RMSNorm over all heads together (`self_attn.q_norm` over
n_heads * d_head, `k_norm` over n_kv_heads * d_head) before the rotary embedding; attn.q / attn.k are read
before it (the projections' outputs), and q_norm_w / k_norm_w hold its weights. resid_mid's resid_pre is read
at the attention module's input (there is no first norm).
"""

from .llama import llama_like

ADAPTER = llama_like(
    "olmo2",
    ("olmo2",),
    notes="post-norms only: attn.out/mlp.out are the post-norms' outputs; q/k RMSNorm over all heads after attn.q/k.",
    norm_placement="post",
    qk_norm="all",
)
