"""Llama family (SmolLM2, Llama 2/3, ...): RMSNorm, rotary positions, gated SiLU MLP, grouped-query attention.

attn.q and attn.k are read before the rotary embedding is applied (as TransformerLens's hook_q/hook_k).
"""

from __future__ import annotations

from ..config import ModelConfig
from .base import Adapter, LayerParts, ModelParts, QKVWeights, in_out_weight, separate_qkv_specs


def config(hf_config) -> ModelConfig:
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    return ModelConfig(
        architecture="llama",
        n_layers=hf_config.num_hidden_layers,
        d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
        d_head=d_head,
        d_mlp=hf_config.intermediate_size,
        d_vocab=hf_config.vocab_size,
        n_ctx=hf_config.max_position_embeddings,
        act_fn=hf_config.hidden_act,
        normalization="rms",
        gated_mlp=True,
        positional="rotary",
        rotary_base=rope.get("rope_theta", getattr(hf_config, "rope_theta", None)),
    )


def parts(hf) -> ModelParts:
    layers = [
        LayerParts(
            block=block,
            attn=block.self_attn,
            attn_out_proj=block.self_attn.o_proj,
            mlp=block.mlp,
            mlp_in=block.mlp.gate_proj,
            mlp_up=block.mlp.up_proj,
            mlp_down=block.mlp.down_proj,
            ln1=block.input_layernorm,
            ln2=block.post_attention_layernorm,
        )
        for block in hf.model.layers
    ]
    return ModelParts(
        blocks=hf.model.layers,
        embed=hf.model.embed_tokens,
        final_norm=hf.model.norm,
        unembed=hf.get_output_embeddings(),
        layers=layers,
    )


def qkv_specs(layer: LayerParts, cfg: ModelConfig):
    attn = layer.attn
    return separate_qkv_specs(layer, cfg, attn.q_proj, attn.k_proj, attn.v_proj)


def qkv_weights(layer: LayerParts, cfg: ModelConfig) -> QKVWeights:
    def per_head(proj, n):  # [d_model, n * d_head] -> [n, d_model, d_head]
        return in_out_weight(proj).view(cfg.d_model, n, cfg.d_head).permute(1, 0, 2)

    def bias(proj, n):
        return None if proj.bias is None else proj.bias.view(n, cfg.d_head)

    a = layer.attn
    return QKVWeights(
        W_Q=per_head(a.q_proj, cfg.n_heads),
        W_K=per_head(a.k_proj, cfg.n_kv_heads),
        W_V=per_head(a.v_proj, cfg.n_kv_heads),
        b_Q=bias(a.q_proj, cfg.n_heads),
        b_K=bias(a.k_proj, cfg.n_kv_heads),
        b_V=bias(a.v_proj, cfg.n_kv_heads),
    )


ADAPTER = Adapter(
    name="llama",
    model_types=("llama",),
    config=config,
    parts=parts,
    qkv_specs=qkv_specs,
    qkv_weights=qkv_weights,
    notes="attn.q/attn.k are pre-rotary; attn.k/attn.v have n_kv_heads heads (grouped-query attention).",
)
