"""GPT-2: LayerNorm, learned positions, GELU MLP, one fused c_attn projection laid out [q | k | v]."""

from __future__ import annotations

from ..config import ModelConfig
from .base import Adapter, LayerParts, ModelParts, QKVWeights, fused_qkv_specs, in_out_weight


def config(hf_config) -> ModelConfig:
    d_model = hf_config.n_embd
    return ModelConfig(
        architecture="gpt2",
        n_layers=hf_config.n_layer,
        d_model=d_model,
        n_heads=hf_config.n_head,
        n_kv_heads=hf_config.n_head,
        d_head=d_model // hf_config.n_head,
        d_mlp=hf_config.n_inner or 4 * d_model,
        d_vocab=hf_config.vocab_size,
        n_ctx=hf_config.n_positions,
        act_fn=hf_config.activation_function,
        normalization="layer",
        gated_mlp=False,
        positional="learned",
    )


def parts(hf) -> ModelParts:
    layers = [
        LayerParts(
            block=block,
            attn=block.attn,
            attn_out_proj=block.attn.c_proj,
            mlp=block.mlp,
            mlp_in=block.mlp.c_fc,
            mlp_down=block.mlp.c_proj,
            ln1=block.ln_1,
            ln2=block.ln_2,
        )
        for block in hf.transformer.h
    ]
    t = hf.transformer
    return ModelParts(
        blocks=hf.transformer.h,
        embed=t.wte,
        pos_embed=t.wpe,
        final_norm=t.ln_f,
        unembed=hf.get_output_embeddings(),
        layers=layers,
    )


def qkv_specs(layer: LayerParts, cfg: ModelConfig):
    return fused_qkv_specs(layer.attn.c_attn, cfg, heads_outer=False)


def qkv_weights(layer: LayerParts, cfg: ModelConfig) -> QKVWeights:
    n, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
    w = in_out_weight(layer.attn.c_attn).view(d, 3, n, dh).permute(1, 2, 0, 3)  # [3, n, d_model, d_head]
    b = layer.attn.c_attn.bias.view(3, n, dh)
    return QKVWeights(W_Q=w[0], W_K=w[1], W_V=w[2], b_Q=b[0], b_K=b[1], b_V=b[2])


ADAPTER = Adapter(
    name="gpt2",
    model_types=("gpt2",),
    config=config,
    parts=parts,
    qkv_specs=qkv_specs,
    qkv_weights=qkv_weights,
    notes="resid_pre of layer 0 = embed + pos_embed.",
)
