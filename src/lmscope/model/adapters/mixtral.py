"""Mixtral: a Llama-like model whose MLP is a sparse mixture of experts (`block.mlp` = MixtralSparseMoeBlock).

Differs from Llama only in the MLP: a router (`mlp.gate`, a linear map to n_experts logits; softmax, top-k,
renormalised) sends each token to k experts; the experts (`mlp.experts`) are gated SiLU MLPs stored fused as
`gate_up_proj` [n_experts, 2 * d_mlp, d_model] and `down_proj` [n_experts, d_model, d_mlp]; mlp.out is the
routing-weighted sum of the k experts' outputs. There is no single mlp.pre / mlp.post; instead:

    mlp.router_logits  [batch, pos, n_experts]  the router's first output (its logits). Writing it re-routes:
                       softmax, top-k and renormalisation run again on the written logits.
    mlp.routing        [batch, pos, n_experts]  the experts' arguments top_k_index / top_k_weights as one
                       dense matrix (a token's weight for each expert, 0 where not in its top k). Writing it
                       runs every expert on every token with the written weights (0 = no contribution).
    mlp.expert_post    [batch, pos, n_experts, d_mlp]  each expert's neurons act(gate) * up, the input of its
                       down projection; 0 for (token, expert) pairs not routed. Computed explicitly while
                       hooked (model/experts.py), so logits may then differ from the fused kernel by float
                       rounding, as with attn.pattern.

Every other site is read where llama.py says. Weights: W_gate/W_in(l) [n_experts, d_model, d_mlp],
W_out(l) [n_experts, d_mlp, d_model], W_router(l) [d_model, n_experts].
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..config import ModelConfig
from .base import HookSpec, LayerParts, MLPWeights, ModelParts
from .llama import llama_like
from .llama import parts as llama_parts


def route(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mixtral's routing (MixtralTopKRouter.forward after its linear map): -> (top-k weights, indices)."""
    probs = torch.nn.functional.softmax(logits.float(), dim=-1)
    top_value, top_index = torch.topk(probs, k, dim=-1)
    top_value /= top_value.sum(dim=-1, keepdim=True)
    return top_value, top_index


def moe_specs(layer: LayerParts, cfg: ModelConfig) -> dict[str, HookSpec]:
    k, n = cfg.experts_per_token, cfg.n_experts

    def read_logits(out) -> Tensor:
        return out[0]

    def write_logits(out, new: Tensor):
        return (new, *route(new, k))

    def read_routing(args) -> Tensor:
        _, index, weights = args
        return torch.zeros(index.shape[0], n, dtype=weights.dtype, device=weights.device).scatter(
            1, index, weights
        )

    def write_routing(args, dense: Tensor):
        every = torch.arange(n, device=dense.device).expand(dense.shape[0], n).contiguous()
        return (args[0], every, dense)

    tokens = layer.mlp  # the MoE block: its input [batch, pos, d_model] gives the (batch, pos) shape
    return {
        "mlp.router_logits": HookSpec(
            layer.router, "out", read_logits, write_logits, whole=True, flat_tokens_of=tokens
        ),
        "mlp.routing": HookSpec(
            layer.experts, "in", read_routing, write_routing, whole=True, flat_tokens_of=tokens
        ),
        "mlp.expert_post": HookSpec(layer.experts, "experts", flat_tokens_of=tokens),
    }


def moe_weights(layer: LayerParts, cfg: ModelConfig) -> MLPWeights:
    gate_up, down = layer.experts.gate_up_proj, layer.experts.down_proj  # [e, 2 * d_mlp, d], [e, d, d_mlp]
    return MLPWeights(
        W_gate=gate_up[:, : cfg.d_mlp].transpose(1, 2),
        W_in=gate_up[:, cfg.d_mlp :].transpose(1, 2),
        W_out=down.transpose(1, 2),
        W_router=layer.router.weight.T,
    )


def parts(hf) -> ModelParts:
    model_parts = llama_parts(hf)
    for layer in model_parts.layers:
        layer.router, layer.experts = layer.mlp.gate, layer.mlp.experts
    return model_parts


ADAPTER = replace(
    llama_like(
        "mixtral",
        ("mixtral",),
        notes="mixture of experts: mlp.router_logits, mlp.routing and mlp.expert_post replace mlp.pre/mlp.post.",
        config_facts=lambda c: dict(n_experts=c.num_local_experts, experts_per_token=c.num_experts_per_tok),
        mlp_specs=moe_specs,
        mlp_weights=moe_weights,
    ),
    parts=parts,
)
