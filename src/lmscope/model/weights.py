"""Canonical views of a model's weights, in TransformerLens's orientation (inputs on the left: x @ W).

    W_E [d_vocab, d_model]   W_pos [n_ctx, d_model] (learned positions only)   W_U [d_model, d_vocab]
    W_Q(l) [n_heads, d_model, d_head]      W_K(l), W_V(l) [n_kv_heads, d_model, d_head]  (expand_kv=True: n_heads)
    W_O(l) [n_heads, d_head, d_model]
    W_in(l) [d_model, d_mlp]: the up-projection (mlp.pre_linear for GLU models, mlp.pre otherwise)
    W_gate(l) [d_model, d_mlp]: GLU models only (mlp.pre)      W_out(l) [d_mlp, d_model]
    mixture of experts: W_in/W_gate(l) [n_experts, d_model, d_mlp], W_out(l) [n_experts, d_mlp, d_model],
                        W_router(l) [d_model, n_experts]
    ln1_w(l), ln2_w(l), ln_final_w [d_model] (+ _b for LayerNorm models): the scale each norm multiplies by
    ln1_post_w(l), ln2_post_w(l) [d_model]: post-norms on the attention / MLP output (Gemma 2/3, OLMo-2)
    q_norm_w(l), k_norm_w(l): norms on queries / keys after W_Q / W_K ([d_head] per head: Qwen3, Gemma 3;
                              [n_heads * d_head] over all heads: OLMo-2)

These are views of the Hugging Face parameters (no copies), except where a family stores something else than
what it applies: Gemma's norms scale by (1 + w), so the *_w views return 1 + w, and its embedding is
multiplied by sqrt(d_model), so W_E is the scaled table (W_E[tokens] == the embed site). Norms are not folded
in; for rotary models W_Q/W_K act before the q/k norms and the rotation. Expanded GQA keys/values are copies.
A weight a model lacks is None (ln1_w for OLMo-2, the post-norms for Llama, ...).

One block by hand (sequential residual; norm(x) = x / rms(x) * w for RMSNorm; post1/post2 = the identity
where ln1_post_w / ln2_post_w are None; pre-norms the identity where ln1_w / ln2_w are None):
    q = norm1(resid_pre) @ W_Q + b_Q  (then q_norm, rotary and softmax give attn.pattern; likewise k, v)
    z = pattern @ v                               attn.out = post1(z @ W_O + b_O)
    resid_mid = resid_pre + attn.out
    mlp.post = act(norm2(resid_mid) @ W_gate) * (norm2(resid_mid) @ W_in)   (act(x @ W_in + b_in) if not GLU)
    mlp.out = post2(mlp.post @ W_out + b_out)     resid_post = resid_mid + mlp.out
    mixture of experts: mlp.out = sum over routed experts e of routing[e] * (mlp.expert_post[e] @ W_out[e])
    logits = final.norm @ W_U + b_U, then c * tanh(logits / c) where cfg.logit_softcap = c
"""

from __future__ import annotations

import torch
from torch import Tensor

from .adapters import Adapter, ModelParts, in_out_weight
from .config import ModelConfig


class Weights:
    def __init__(self, parts: ModelParts, cfg: ModelConfig, adapter: Adapter):
        self._parts, self._cfg, self._adapter = parts, cfg, adapter

    def _layer(self, layer: int):
        if not 0 <= layer < self._cfg.n_layers:
            raise IndexError(f"layer {layer} out of range: this model has layers 0..{self._cfg.n_layers - 1}")
        return self._parts.layers[layer]

    def _scale(self, norm) -> Tensor | None:
        if norm is None:
            return None
        offset = self._cfg.norm_offset
        return norm.weight + offset if offset else norm.weight

    @property
    def W_E(self) -> Tensor:
        scale = self._cfg.embed_scale
        weight = self._parts.embed.weight
        # the same product (in the weight's dtype) the embedding module computes, so W_E[tokens] == embed
        return weight * torch.tensor(scale, dtype=weight.dtype) if scale != 1.0 else weight

    @property
    def W_pos(self) -> Tensor | None:
        return None if self._parts.pos_embed is None else self._parts.pos_embed.weight

    @property
    def W_U(self) -> Tensor:
        return in_out_weight(self._parts.unembed)

    @property
    def b_U(self) -> Tensor | None:
        return getattr(self._parts.unembed, "bias", None)

    def _qkv(self, layer: int):
        return self._adapter.qkv_weights(self._layer(layer), self._cfg)

    def _expand(self, w: Tensor | None, expand_kv: bool) -> Tensor | None:
        n_rep = self._cfg.n_heads // self._cfg.n_kv_heads
        return w.repeat_interleave(n_rep, dim=0) if (expand_kv and w is not None and n_rep > 1) else w

    def W_Q(self, layer: int) -> Tensor:
        return self._qkv(layer).W_Q

    def W_K(self, layer: int, expand_kv: bool = False) -> Tensor:
        return self._expand(self._qkv(layer).W_K, expand_kv)

    def W_V(self, layer: int, expand_kv: bool = False) -> Tensor:
        return self._expand(self._qkv(layer).W_V, expand_kv)

    def b_Q(self, layer: int) -> Tensor | None:
        return self._qkv(layer).b_Q

    def b_K(self, layer: int, expand_kv: bool = False) -> Tensor | None:
        return self._expand(self._qkv(layer).b_K, expand_kv)

    def b_V(self, layer: int, expand_kv: bool = False) -> Tensor | None:
        return self._expand(self._qkv(layer).b_V, expand_kv)

    def W_O(self, layer: int) -> Tensor:
        c = self._cfg
        return in_out_weight(self._layer(layer).attn_out_proj).view(c.n_heads, c.d_head, c.d_model)

    def b_O(self, layer: int) -> Tensor | None:
        return getattr(self._layer(layer).attn_out_proj, "bias", None)

    def _mlp(self, layer: int):
        return self._adapter.mlp_weights(self._layer(layer), self._cfg)

    def W_in(self, layer: int) -> Tensor:
        return self._mlp(layer).W_in

    def b_in(self, layer: int) -> Tensor | None:
        return self._mlp(layer).b_in

    def W_gate(self, layer: int) -> Tensor | None:
        return self._mlp(layer).W_gate

    def W_out(self, layer: int) -> Tensor:
        return self._mlp(layer).W_out

    def b_out(self, layer: int) -> Tensor | None:
        return self._mlp(layer).b_out

    def W_router(self, layer: int) -> Tensor | None:
        return self._mlp(layer).W_router

    def ln1_w(self, layer: int) -> Tensor | None:
        return self._scale(self._layer(layer).ln1)

    def ln1_b(self, layer: int) -> Tensor | None:
        return getattr(self._layer(layer).ln1, "bias", None)

    def ln2_w(self, layer: int) -> Tensor | None:
        return self._scale(self._layer(layer).ln2)

    def ln2_b(self, layer: int) -> Tensor | None:
        return getattr(self._layer(layer).ln2, "bias", None)

    def ln1_post_w(self, layer: int) -> Tensor | None:
        return self._scale(self._layer(layer).attn_post_norm)

    def ln2_post_w(self, layer: int) -> Tensor | None:
        return self._scale(self._layer(layer).mlp_post_norm)

    def q_norm_w(self, layer: int) -> Tensor | None:
        return self._scale(self._layer(layer).q_norm)

    def k_norm_w(self, layer: int) -> Tensor | None:
        return self._scale(self._layer(layer).k_norm)

    @property
    def ln_final_w(self) -> Tensor:
        return self._scale(self._parts.final_norm)

    @property
    def ln_final_b(self) -> Tensor | None:
        return getattr(self._parts.final_norm, "bias", None)
