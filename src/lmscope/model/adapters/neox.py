"""GPT-NeoX (Pythia): LayerNorm, (partial) rotary positions, GELU MLP, fused query_key_value laid out per head
as [head, (q, k, v), d_head], and usually a parallel residual (attention and MLP both read resid_pre).

With a parallel residual, resid_mid = resid_pre + attn.out is defined and writable (it changes resid_post),
but the MLP does not read it.
"""

from __future__ import annotations

from ..config import ModelConfig
from .base import Adapter, LayerParts, ModelParts, QKVWeights, fused_qkv_specs, in_out_weight


def config(hf_config) -> ModelConfig:
    d_model = hf_config.hidden_size
    rope = getattr(hf_config, "rope_parameters", None) or {}
    return ModelConfig(
        architecture="gpt_neox",
        n_layers=hf_config.num_hidden_layers,
        d_model=d_model,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=hf_config.num_attention_heads,
        d_head=d_model // hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size,
        d_vocab=hf_config.vocab_size,
        n_ctx=hf_config.max_position_embeddings,
        act_fn=hf_config.hidden_act,
        normalization="layer",
        gated_mlp=False,
        positional="rotary",
        rotary_base=rope.get("rope_theta", getattr(hf_config, "rotary_emb_base", None)),
        parallel_residual=bool(hf_config.use_parallel_residual),
    )


def parts(hf) -> ModelParts:
    layers = [
        LayerParts(
            block=block,
            attn=block.attention,
            attn_out_proj=block.attention.dense,
            mlp=block.mlp,
            mlp_in=block.mlp.dense_h_to_4h,
            mlp_down=block.mlp.dense_4h_to_h,
            ln1=block.input_layernorm,
            ln2=block.post_attention_layernorm,
        )
        for block in hf.gpt_neox.layers
    ]
    g = hf.gpt_neox
    return ModelParts(
        blocks=hf.gpt_neox.layers,
        embed=g.embed_in,
        final_norm=g.final_layer_norm,
        unembed=hf.get_output_embeddings(),
        layers=layers,
    )


def qkv_specs(layer: LayerParts, cfg: ModelConfig):
    return fused_qkv_specs(layer.attn.query_key_value, cfg, heads_outer=True)


def qkv_weights(layer: LayerParts, cfg: ModelConfig) -> QKVWeights:
    n, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
    proj = layer.attn.query_key_value
    w = in_out_weight(proj).view(d, n, 3, dh).permute(2, 1, 0, 3)  # [3, n, d_model, d_head]
    b = None if proj.bias is None else proj.bias.view(n, 3, dh).permute(1, 0, 2)
    return QKVWeights(
        W_Q=w[0],
        W_K=w[1],
        W_V=w[2],
        b_Q=None if b is None else b[0],
        b_K=None if b is None else b[1],
        b_V=None if b is None else b[2],
    )


ADAPTER = Adapter(
    name="gpt_neox",
    model_types=("gpt_neox",),
    config=config,
    parts=parts,
    qkv_specs=qkv_specs,
    qkv_weights=qkv_weights,
    notes="attn.q/attn.k are pre-rotary; with a parallel residual the MLP reads resid_pre, not resid_mid.",
)
