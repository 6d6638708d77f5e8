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
           "experts" = the per-expert activations inside `module` (a fused experts module, see model/experts.py),
           "resid_mid" = resid_pre + the attention output of `module` (what the block adds to the residual);
                         writing it changes that output by the difference, so the new residual flows on.
                         resid_pre is read at the input of `resid_pre_at` (the block's first norm, or the
                         attention module where the block has no pre-norm).
    read:  hooked tensor -> canonical view (no copy where possible)
    write: (hooked tensor, new canonical tensor) -> tensor to pass on in its place
    whole: read/write see the module's whole positional-argument tuple ("in") or whole output ("out"),
           for sites spread over several arguments (the routing of a mixture of experts).
    flat_tokens_of: the read tensor's first axis is (batch, pos) flattened, as in the input of this module;
           hooks.py reshapes it to [batch, pos, ...] for the canonical view and back for writes.
    """

    module: nn.Module
    where: str
    read: Callable = _identity_read
    write: Callable = _identity_write
    resid_pre_at: nn.Module | None = None
    whole: bool = False
    flat_tokens_of: nn.Module | None = None


@dataclass
class LayerParts:
    """The modules of one decoder layer. Optional parts are None where the family has no such module."""

    block: nn.Module  # the decoder layer: input = resid_pre, output = resid_post
    attn: nn.Module  # attention module: output[0] = attn.out before any post-norm
    attn_out_proj: nn.Module  # W_O: its input is attn.z
    mlp: nn.Module  # output = mlp.out before any post-norm
    mlp_in: nn.Module | None = None  # output = mlp.pre (the gate for GLU MLPs); None for fused gate_up / MoE
    mlp_down: nn.Module | None = None  # W_out: its input is mlp.post; None for MoE
    ln1: nn.Module | None = None  # pre-attention norm (None: OLMo-2 has none)
    ln2: nn.Module | None = None  # pre-MLP norm (None: OLMo-2 has none)
    mlp_up: nn.Module | None = None  # GLU only: output = mlp.pre_linear
    attn_post_norm: nn.Module | None = None  # Gemma 2/3, OLMo-2: normalises the attention output
    mlp_post_norm: nn.Module | None = None  # Gemma 2/3, OLMo-2: normalises the MLP output
    q_norm: nn.Module | None = None  # Qwen3, Gemma 3 (per head), OLMo-2 (over all heads): after attn.q
    k_norm: nn.Module | None = None
    router: nn.Module | None = None  # mixture of experts: the router (gate) module
    experts: nn.Module | None = None  # mixture of experts: the fused experts module

    @property
    def attn_added(self) -> nn.Module:
        """The module whose output the block adds to the residual after attention (attn.out)."""
        return self.attn_post_norm if self.attn_post_norm is not None else self.attn

    @property
    def mlp_added(self) -> nn.Module:
        """The module whose output the block adds to the residual after the MLP (mlp.out)."""
        return self.mlp_post_norm if self.mlp_post_norm is not None else self.mlp


@dataclass
class ModelParts:
    blocks: nn.ModuleList  # the container the HF forward loops over (lets lmscope skip early blocks)
    embed: nn.Embedding
    final_norm: nn.Module
    unembed: nn.Module
    layers: list[LayerParts]
    pos_embed: nn.Embedding | None = None
    logits: HookSpec | None = None  # where the logits are read when not at the unembedding (soft-capping)


@dataclass
class QKVWeights:
    """Per-head projection weights in TransformerLens orientation: W [heads, d_model, d_head], b [heads, d_head]."""

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    b_Q: Tensor | None = None
    b_K: Tensor | None = None
    b_V: Tensor | None = None


@dataclass
class MLPWeights:
    """MLP weights, inputs on the left: W_in/W_gate [d_model, d_mlp], W_out [d_mlp, d_model].

    Mixture of experts: one per expert, stacked on a first axis: [n_experts, d_model, d_mlp] etc., and
    W_router [d_model, n_experts]."""

    W_in: Tensor
    W_out: Tensor
    W_gate: Tensor | None = None  # GLU MLPs only
    b_in: Tensor | None = None
    b_out: Tensor | None = None
    W_router: Tensor | None = None


def module_mlp_specs(parts: LayerParts, cfg: ModelConfig | None = None) -> dict[str, HookSpec]:
    """MLP sites for an MLP built from one module per projection (gate/up/down or fc/proj)."""
    specs = {"mlp.pre": HookSpec(parts.mlp_in, "out")}
    if parts.mlp_up is not None:
        specs["mlp.pre_linear"] = HookSpec(parts.mlp_up, "out")
    specs["mlp.post"] = HookSpec(parts.mlp_down, "in")
    return specs


def in_out_weight(module: nn.Module) -> Tensor:
    """The weight of a linear map as [d_in, d_out], for nn.Linear ([out, in]) and GPT-2's Conv1D ([in, out])."""
    if isinstance(module, nn.Linear):
        return module.weight.T
    return module.weight  # transformers' Conv1D stores x @ W


def module_mlp_weights(parts: LayerParts, cfg: ModelConfig | None = None) -> MLPWeights:
    up = parts.mlp_up if parts.mlp_up is not None else parts.mlp_in
    return MLPWeights(
        W_in=in_out_weight(up),
        W_out=in_out_weight(parts.mlp_down),
        W_gate=in_out_weight(parts.mlp_in) if parts.mlp_up is not None else None,
        b_in=getattr(up, "bias", None),
        b_out=getattr(parts.mlp_down, "bias", None),
    )


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
    mlp_specs: Callable[[LayerParts, ModelConfig], dict[str, HookSpec]] = module_mlp_specs
    mlp_weights: Callable[[LayerParts, ModelConfig], MLPWeights] = module_mlp_weights


def split_heads(n_heads: int, d_head: int) -> tuple[Callable, Callable]:
    """read/write pair for a tensor [..., n_heads * d_head] viewed as [..., n_heads, d_head]."""

    def read(x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], n_heads, d_head)

    def write(x: Tensor, new: Tensor) -> Tensor:
        return new.reshape(*new.shape[:-2], n_heads * d_head)

    return read, write


def layer_specs(
    parts: LayerParts, cfg: ModelConfig, qkv: dict[str, HookSpec], mlp: dict[str, HookSpec] | None = None
) -> dict[str, HookSpec]:
    """Every per-layer site of an adapter, keyed by its suffix ('attn.z', 'resid_mid', ...).

    attn.out and mlp.out are what the block adds to the residual: after the post-norm where there is one
    (Gemma 2/3, OLMo-2), so resid_mid = resid_pre + attn.out and resid_post = resid_mid + mlp.out always hold
    (sequential blocks). `mlp`: the MLP's inner sites (default: one module per projection).
    """
    z_read, z_write = split_heads(cfg.n_heads, cfg.d_head)
    resid_pre_at = parts.ln1 if parts.ln1 is not None else parts.attn
    return {
        "resid_pre": HookSpec(parts.block, "in"),
        **qkv,
        "attn.pattern": HookSpec(parts.attn, "pattern"),
        "attn.z": HookSpec(parts.attn_out_proj, "in", z_read, z_write),
        "attn.out": HookSpec(parts.attn_added, "out"),
        "resid_mid": HookSpec(parts.attn_added, "resid_mid", resid_pre_at=resid_pre_at),
        "mlp.in": HookSpec(parts.mlp, "in"),
        **(module_mlp_specs(parts) if mlp is None else mlp),
        "mlp.out": HookSpec(parts.mlp_added, "out"),
        "resid_post": HookSpec(parts.block, "out"),
    }


def global_specs(parts: ModelParts) -> dict[str, HookSpec]:
    specs = {
        "embed": HookSpec(parts.embed, "out"),
        "final.norm": HookSpec(parts.final_norm, "out"),
        "logits": parts.logits or HookSpec(parts.unembed, "out"),
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


def concat_specs(module: nn.Module, pieces: list[tuple[str, int, int | None]]) -> dict[str, HookSpec]:
    """Sites for one projection whose output concatenates pieces along the last axis ([q | k | v] of
    Phi-3's qkv_proj, [gate | up] of its gate_up_proj). pieces: (site, width, n_heads or None) in order;
    a piece with n_heads is viewed as [..., n_heads, width // n_heads]."""
    bounds, start = [], 0
    for _, width, _ in pieces:
        bounds.append((start, start + width))
        start += width

    def make(i: int, n_heads: int | None) -> HookSpec:
        lo, hi = bounds[i]

        def read(x: Tensor) -> Tensor:
            piece = x[..., lo:hi]
            return piece if n_heads is None else piece.unflatten(-1, (n_heads, -1))

        def write(x: Tensor, new: Tensor) -> Tensor:
            flat = new if n_heads is None else new.flatten(-2)
            return torch.cat([x[..., :lo], flat.to(x.dtype), x[..., hi:]], dim=-1)

        return HookSpec(module, "out", read, write)

    return {site: make(i, n) for i, (site, _, n) in enumerate(pieces)}
