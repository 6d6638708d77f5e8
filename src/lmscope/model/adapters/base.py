"""What an architecture adapter provides, and the site -> hook mapping every adapter shares.

An adapter only says where things are in the Hugging Face module tree (``ModelParts``) and how the
architecture packs its queries, keys and values. Everything else (hooks, caching, interventions,
weights) is generic and lives in ``lmscope.model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import ModelConfig


def _identity_read(x: Tensor) -> Tensor:
    return x


def _identity_write(x: Tensor, new: Tensor) -> Tensor:
    return new


@dataclass
class HookSpec:
    """Where a site lives and how to view it canonically.

    where: "in"  = first input of the module's forward (positional or `hidden_states=`),
           "out" = the module's output (its first element when the output is a tuple),
           "pattern" = the attention probabilities inside `module` (an attention module),
           "resid_mid" = resid_pre + the attention output of `module`; writing it changes the attention
                         output by the difference, so the new residual flows on. resid_pre is read at the
                         input of `resid_pre_at` (the block's first norm).
    read:  hooked tensor -> canonical view (no copy where possible)
    write: (hooked tensor, new canonical tensor) -> tensor to pass on in its place
    """

    module: nn.Module
    where: str
    read: Callable[[Tensor], Tensor] = _identity_read
    write: Callable[[Tensor, Tensor], Tensor] = _identity_write
    resid_pre_at: nn.Module | None = None


@dataclass
class LayerParts:
    block: nn.Module  # the decoder layer: input = resid_pre, output = resid_post
    attn: nn.Module  # attention module: output[0] = attn.out
    attn_out_proj: nn.Module  # W_O: its input is attn.z
    mlp: nn.Module  # output = mlp.out
    mlp_in: nn.Module  # output = mlp.pre (the gate for GLU MLPs)
    mlp_down: nn.Module  # W_out: its input is mlp.post
    ln1: nn.Module
    ln2: nn.Module
    mlp_up: nn.Module | None = None  # GLU only: output = mlp.pre_linear


@dataclass
class ModelParts:
    blocks: nn.ModuleList  # the container the HF forward loops over (lets lmscope skip early blocks)
    embed: nn.Embedding
    final_norm: nn.Module
    unembed: nn.Module
    layers: list[LayerParts]
    pos_embed: nn.Embedding | None = None


@dataclass
class QKVWeights:
    """Per-head projection weights in TransformerLens orientation: W [heads, d_model, d_head], b [heads, d_head]."""

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    b_Q: Tensor | None = None
    b_K: Tensor | None = None
    b_V: Tensor | None = None


@dataclass(frozen=True)
class Adapter:
    """One architecture family. `model_types` are the HF `config.model_type` values it handles."""

    name: str
    model_types: tuple[str, ...]
    config: Callable[[object], ModelConfig]
    parts: Callable[[nn.Module], ModelParts]
    qkv_specs: Callable[[LayerParts, ModelConfig], dict[str, HookSpec]]
    qkv_weights: Callable[[LayerParts, ModelConfig], QKVWeights]
    notes: str = field(default="")


def split_heads(n_heads: int, d_head: int) -> tuple[Callable, Callable]:
    """read/write pair for a tensor [..., n_heads * d_head] viewed as [..., n_heads, d_head]."""

    def read(x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], n_heads, d_head)

    def write(x: Tensor, new: Tensor) -> Tensor:
        return new.reshape(*new.shape[:-2], n_heads * d_head)

    return read, write


def in_out_weight(module: nn.Module) -> Tensor:
    """The weight of a linear map as [d_in, d_out], for nn.Linear ([out, in]) and GPT-2's Conv1D ([in, out])."""
    if isinstance(module, nn.Linear):
        return module.weight.T
    return module.weight  # transformers' Conv1D stores x @ W


def layer_specs(parts: LayerParts, cfg: ModelConfig, qkv: dict[str, HookSpec]) -> dict[str, HookSpec]:
    """Every per-layer site of an adapter, keyed by its suffix ('attn.z', 'resid_mid', ...)."""
    z_read, z_write = split_heads(cfg.n_heads, cfg.d_head)
    specs = {
        "resid_pre": HookSpec(parts.block, "in"),
        **qkv,
        "attn.pattern": HookSpec(parts.attn, "pattern"),
        "attn.z": HookSpec(parts.attn_out_proj, "in", z_read, z_write),
        "attn.out": HookSpec(parts.attn, "out"),
        "resid_mid": HookSpec(parts.attn, "resid_mid", resid_pre_at=parts.ln1),
        "mlp.pre": HookSpec(parts.mlp_in, "out"),
        "mlp.post": HookSpec(parts.mlp_down, "in"),
        "mlp.out": HookSpec(parts.mlp, "out"),
        "resid_post": HookSpec(parts.block, "out"),
    }
    if parts.mlp_up is not None:
        specs["mlp.pre_linear"] = HookSpec(parts.mlp_up, "out")
    return specs


def global_specs(parts: ModelParts) -> dict[str, HookSpec]:
    specs = {
        "embed": HookSpec(parts.embed, "out"),
        "final.norm": HookSpec(parts.final_norm, "out"),
        "logits": HookSpec(parts.unembed, "out"),
    }
    if parts.pos_embed is not None:
        specs["pos_embed"] = HookSpec(parts.pos_embed, "out")
    return specs


def separate_qkv_specs(parts: LayerParts, cfg: ModelConfig, q: nn.Module, k: nn.Module, v: nn.Module):
    """Sites for models with one projection module each for q, k and v (Llama family)."""
    q_read, q_write = split_heads(cfg.n_heads, cfg.d_head)
    kv_read, kv_write = split_heads(cfg.n_kv_heads, cfg.d_head)
    return {
        "attn.q": HookSpec(q, "out", q_read, q_write),
        "attn.k": HookSpec(k, "out", kv_read, kv_write),
        "attn.v": HookSpec(v, "out", kv_read, kv_write),
    }


def fused_qkv_specs(module: nn.Module, cfg: ModelConfig, heads_outer: bool) -> dict[str, HookSpec]:
    """Sites for one fused projection whose output packs q, k and v.

    heads_outer=False: [..., 3, n_heads, d_head] (GPT-2's c_attn); True: [..., n_heads, 3, d_head] (GPT-NeoX).
    """
    n, d = cfg.n_heads, cfg.d_head
    axis = -2 if heads_outer else -3

    def unpack(x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], n, 3, d) if heads_outer else x.view(*x.shape[:-1], 3, n, d)

    def make(i: int) -> HookSpec:
        def read(x: Tensor) -> Tensor:
            return unpack(x).select(axis, i)

        def write(x: Tensor, new: Tensor) -> Tensor:
            pieces = list(unpack(x).unbind(axis))
            pieces[i] = new
            return torch.stack(pieces, dim=axis).flatten(-3)

        return HookSpec(module, "out", read, write)

    return {"attn.q": make(0), "attn.k": make(1), "attn.v": make(2)}
