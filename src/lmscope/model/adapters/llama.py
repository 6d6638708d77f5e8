"""Llama family (SmolLM2, Llama 2/3, ...) and the shared code of every Llama-like family.

Llama: RMSNorm, rotary positions, gated SiLU MLP, grouped-query attention, one projection module each for
q, k, v (`self_attn.q_proj/k_proj/v_proj`), o_proj, gate_proj, up_proj, down_proj; blocks in `model.layers`.

Where each site is read (module paths under `model.layers.{l}`):
    resid_pre / resid_post   the decoder layer's input / output
    attn.q, attn.k, attn.v   outputs of self_attn.q_proj / k_proj / v_proj, split into heads: before any q/k
                             norm and before the rotary embedding (as TransformerLens's hook_q/hook_k), so
                             attn.q = norm1(resid_pre) @ W_Q + b_Q in every family
    attn.pattern             the softmax probabilities inside self_attn (see model/attention.py)
    attn.z                   the input of self_attn.o_proj, split into heads
    attn.out                 what the block adds to the residual after attention: self_attn's output, or
                             the post-attention norm's output where there is one (Gemma 2/3, OLMo-2)
    mlp.pre                  output of mlp.gate_proj (the gate)     mlp.pre_linear  output of mlp.up_proj
    mlp.post                 input of mlp.down_proj (the neurons)
    mlp.out                  mlp's output, or the post-feedforward norm's output where there is one
    embed                    output of model.embed_tokens (= what enters block 0)
    final.norm, logits       outputs of model.norm and lm_head

`llama_like(...)` builds the adapter of a family that differs from Llama only in the ways its arguments
name; mistral.py, qwen.py, gemma.py and olmo2.py are a few lines each on top of it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..config import ModelConfig
from .base import Adapter, HookSpec, LayerParts, ModelParts, QKVWeights, in_out_weight, separate_qkv_specs

# norm_placement -> (ln1, ln2, attn_post_norm, mlp_post_norm) attribute names on the decoder layer
_NORMS = {
    "pre": ("input_layernorm", "post_attention_layernorm", None, None),
    "sandwich": (
        "input_layernorm",
        "pre_feedforward_layernorm",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
    "post": (None, None, "post_attention_layernorm", "post_feedforward_layernorm"),
}


def sliding_layers(hf_config) -> tuple[int | None, tuple[int, ...]]:
    """(window, layers that use it): from `layer_types` where the config has them (Qwen2/3, Gemma 2/3),
    else every layer when `sliding_window` is set (Mistral, Phi-3, Mixtral)."""
    window = getattr(hf_config, "sliding_window", None)
    types = getattr(hf_config, "layer_types", None)
    if not window:
        return None, ()
    if types is not None:
        layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    else:
        layers = tuple(range(hf_config.num_hidden_layers))
    return (window, layers) if layers else (None, ())


def config(hf_config, architecture: str = "llama", **facts) -> ModelConfig:
    """The ModelConfig of a Llama-like HF config; `facts` override or add fields (norm_offset=1.0, ...)."""
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    window, layers = sliding_layers(hf_config)
    fields = dict(
        architecture=architecture,
        n_layers=hf_config.num_hidden_layers,
        d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
        d_head=d_head,
        d_mlp=hf_config.intermediate_size,
        d_vocab=hf_config.vocab_size,
        n_ctx=hf_config.max_position_embeddings,
        act_fn=getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act,
        normalization="rms",
        gated_mlp=True,
        positional="rotary",
        rotary_base=rope.get("rope_theta", getattr(hf_config, "rope_theta", None)),
        sliding_window=window,
        sliding_layers=layers,
    )
    fields.update(facts)
    return ModelConfig(**fields)


def parts(
    hf, norm_placement: str = "pre", qk_norm: bool = False, logits: HookSpec | None = None
) -> ModelParts:
    """Modules of a Llama-like model. norm_placement: see ModelConfig; qk_norm: self_attn has q_norm/k_norm."""
    ln1, ln2, post1, post2 = _NORMS[norm_placement]

    def get(block, name):
        return None if name is None else getattr(block, name)

    layers = [
        LayerParts(
            block=block,
            attn=block.self_attn,
            attn_out_proj=block.self_attn.o_proj,
            mlp=block.mlp,
            mlp_in=getattr(block.mlp, "gate_proj", None),
            mlp_up=getattr(block.mlp, "up_proj", None),
            mlp_down=getattr(block.mlp, "down_proj", None),
            ln1=get(block, ln1),
            ln2=get(block, ln2),
            attn_post_norm=get(block, post1),
            mlp_post_norm=get(block, post2),
            q_norm=block.self_attn.q_norm if qk_norm else None,
            k_norm=block.self_attn.k_norm if qk_norm else None,
        )
        for block in hf.model.layers
    ]
    return ModelParts(
        blocks=hf.model.layers,
        embed=hf.model.embed_tokens,
        final_norm=hf.model.norm,
        unembed=hf.get_output_embeddings(),
        layers=layers,
        logits=logits,
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


def softcapped_logits(hf) -> HookSpec:
    """The logits site of a model that soft-caps its logits after lm_head (Gemma 2/3): read from the output
    of the whole model, so it is the final, capped logits; writing it replaces them."""

    def read(out) -> Tensor:
        return out if isinstance(out, Tensor) else out.logits

    def write(out, new: Tensor):
        if isinstance(out, Tensor):
            return new
        out.logits = new
        return out

    return HookSpec(hf, "out", read, write)


def llama_like(
    name: str,
    model_types: tuple[str, ...],
    notes: str,
    norm_placement: str = "pre",
    qk_norm: str = "",
    config_facts: Callable[[object], dict] | None = None,
    **adapter_fields,
) -> Adapter:
    """An adapter for a family laid out like Llama. config_facts(hf_config) -> extra ModelConfig fields."""

    def family_config(hf_config) -> ModelConfig:
        facts = config_facts(hf_config) if config_facts else {}
        return config(hf_config, name, norm_placement=norm_placement, qk_norm=qk_norm, **facts)

    def family_parts(hf) -> ModelParts:
        capped = getattr(hf.config, "final_logit_softcapping", None)
        return parts(hf, norm_placement, bool(qk_norm), softcapped_logits(hf) if capped else None)

    fields = dict(qkv_specs=qkv_specs, qkv_weights=qkv_weights) | adapter_fields
    return Adapter(
        name=name, model_types=model_types, config=family_config, parts=family_parts, notes=notes, **fields
    )


ADAPTER = llama_like(
    "llama",
    ("llama",),
    notes="attn.q/attn.k are pre-rotary; attn.k/attn.v have n_kv_heads heads (grouped-query attention).",
)
