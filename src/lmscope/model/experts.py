"""Per-expert activations of a mixture-of-experts MLP as a site.

transformers runs all experts of a layer in one fused function looked up by `config._experts_implementation`
(grouped_mm by default), which never materialises each expert's neurons. While some site hooks a layer's
experts, lmscope switches the model to a registered function "lmscope_<original>": for hooked layers it runs
the experts explicitly with the hook between the activation and the down projections; every other layer calls
the original function unchanged (as model/attention.py does for the attention pattern).

Supported layout (Mixtral, Qwen2-MoE, ... in transformers 5): `gate_up_proj` [n_experts, 2 * d_mlp, d_model]
holding [gate; up], `down_proj` [n_experts, d_model, d_mlp], `act_fn`, no biases.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

# experts module -> functions applied in order to its activations [tokens, n_experts, d_mlp]
EXPERT_HOOKS: weakref.WeakKeyDictionary[nn.Module, list[Callable[[Tensor], Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _check_layout(module: nn.Module) -> None:
    unsupported = [
        flag for flag in ("has_bias", "is_transposed", "has_post_expert_norm") if getattr(module, flag, False)
    ]
    if unsupported or not getattr(module, "has_gate", True) or not getattr(module, "is_concatenated", True):
        raise NotImplementedError(
            f"hooking the experts of {type(module).__name__} is not supported: lmscope reads experts stored as "
            f"gate_up_proj [experts, 2 * d_mlp, d_model] without biases (this one has {unsupported or 'no gate'})"
        )


def explicit_experts(
    module, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor, hooks
) -> Tensor:
    """The experts' output [tokens, d_model], computed expert by expert (as transformers' eager loop does).

    hidden_states [tokens, d_model]; top_k_index, top_k_weights [tokens, k]. The hooks see (and may replace)
    the activations [tokens, n_experts, d_mlp], zero for (token, expert) pairs not routed; only routed pairs
    flow on.
    """
    _check_layout(module)
    n_tokens, n_experts = hidden_states.shape[0], module.num_experts
    d_mlp = module.down_proj.shape[-1]
    post = hidden_states.new_zeros(n_tokens, n_experts, d_mlp)
    routed = []  # (expert, token rows, their position in the top k)
    for expert in range(n_experts):
        token_idx, top_k_pos = torch.where(top_k_index == expert)
        if token_idx.numel() == 0:
            continue
        gate, up = nn.functional.linear(hidden_states[token_idx], module.gate_up_proj[expert]).chunk(
            2, dim=-1
        )
        post[token_idx, expert] = module.act_fn(gate) * up
        routed.append((expert, token_idx, top_k_pos))
    for hook in hooks:
        post = hook(post)
    out = torch.zeros_like(hidden_states)
    for expert, token_idx, top_k_pos in routed:
        y = nn.functional.linear(post[token_idx, expert], module.down_proj[expert])
        y = y * top_k_weights[token_idx, top_k_pos, None]
        out.index_add_(0, token_idx, y.to(out.dtype))
    return out


def _original_function(base: str | None, module: nn.Module) -> Callable:
    if base in (None, "eager"):  # the class's own forward, which the experts decorator wrapped
        return type(module).forward.__wrapped__
    return ALL_EXPERTS_FUNCTIONS[base]


def _make_experts(base: str | None) -> Callable:
    def experts(module, hidden_states, top_k_index, top_k_weights):
        hooks = EXPERT_HOOKS.get(module)
        if not hooks:
            return _original_function(base, module)(module, hidden_states, top_k_index, top_k_weights)
        return explicit_experts(module, hidden_states, top_k_index, top_k_weights, hooks)

    return experts


def hooked_implementation(base: str | None) -> str:
    """Register (once) and return the name of the activation-exposing implementation wrapping `base`."""
    name = f"lmscope_{base or 'eager'}"
    if name not in ALL_EXPERTS_FUNCTIONS:
        ExpertsInterface.register(name, _make_experts(base))
    return name
