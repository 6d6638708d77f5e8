"""Canonical views of a model's weights, in TransformerLens's orientation (inputs on the left: x @ W).

    W_E [d_vocab, d_model]   W_pos [n_ctx, d_model] (learned positions only)   W_U [d_model, d_vocab]
    W_Q(l) [n_heads, d_model, d_head]      W_K(l), W_V(l) [n_kv_heads, d_model, d_head]  (expand_kv=True: n_heads)
    W_O(l) [n_heads, d_head, d_model]
    W_in(l) [d_model, d_mlp]: the up-projection (mlp.pre_linear for GLU models, mlp.pre otherwise)
    W_gate(l) [d_model, d_mlp]: GLU models only (mlp.pre)      W_out(l) [d_mlp, d_model]
    ln1_w(l), ln2_w(l), ln_final_w [d_model] (+ _b for LayerNorm models)

These are views of the Hugging Face parameters (no copies): the norms are not folded in, and for rotary
models W_Q/W_K act before the rotation. Expanded GQA keys/values are copies.
"""

from __future__ import annotations

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

    @property
    def W_E(self) -> Tensor:
        return self._parts.embed.weight

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

    def W_in(self, layer: int) -> Tensor:
        parts = self._layer(layer)
        return in_out_weight(parts.mlp_up if parts.mlp_up is not None else parts.mlp_in)

    def b_in(self, layer: int) -> Tensor | None:
        parts = self._layer(layer)
        return getattr(parts.mlp_up if parts.mlp_up is not None else parts.mlp_in, "bias", None)

    def W_gate(self, layer: int) -> Tensor | None:
        parts = self._layer(layer)
        return in_out_weight(parts.mlp_in) if parts.mlp_up is not None else None

    def W_out(self, layer: int) -> Tensor:
        return in_out_weight(self._layer(layer).mlp_down)

    def b_out(self, layer: int) -> Tensor | None:
        return getattr(self._layer(layer).mlp_down, "bias", None)

    def ln1_w(self, layer: int) -> Tensor:
        return self._layer(layer).ln1.weight

    def ln1_b(self, layer: int) -> Tensor | None:
        return getattr(self._layer(layer).ln1, "bias", None)

    def ln2_w(self, layer: int) -> Tensor:
        return self._layer(layer).ln2.weight

    def ln2_b(self, layer: int) -> Tensor | None:
        return getattr(self._layer(layer).ln2, "bias", None)

    @property
    def ln_final_w(self) -> Tensor:
        return self._parts.final_norm.weight

    @property
    def ln_final_b(self) -> Tensor | None:
        return getattr(self._parts.final_norm, "bias", None)
