"""The attention pattern as a site.

Hugging Face models compute attention through a function looked up by `config._attn_implementation`
(sdpa by default on CPU), which never materialises the probabilities. While some site hooks a layer's
pattern, lmscope switches the model to a registered function "lmscope_<original>": for hooked layers it
computes attention explicitly (eager) with the hook between softmax and the value mix; for every other
layer it calls the original function unchanged, so numerics only change where a pattern is hooked.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

# attention module -> functions applied in order to its pattern [batch, n_heads, query_pos, key_pos]
PATTERN_HOOKS: weakref.WeakKeyDictionary[nn.Module, list[Callable[[Tensor], Tensor]]] = (
    weakref.WeakKeyDictionary()
)
SUPPORTED_BASES = ("sdpa", "eager")


def _original_function(base: str, module: nn.Module) -> Callable:
    if base == "eager":  # each modeling file has its own eager function; it is not in the registry
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def eager_with_pattern(
    module, query, key, value, attention_mask, hooks, scaling=None, dropout=0.0, softcap=None
):
    """Explicit attention. query [b, h, q, d], key/value [b, kv_h, k, d]; returns ([b, q, h, d], pattern).

    softcap (Gemma 2): scores -> softcap * tanh(scores / softcap) before the mask. Sliding windows need
    nothing here: they are part of the mask transformers builds for each layer."""
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: each kv head serves n_rep consecutive query heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [b, h, q, k]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = scores.shape[-2:]
    min_value = torch.finfo(scores.dtype).min
    if attention_mask is None:  # sdpa's mask builder returns None for plain causal attention
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~causal, min_value)
    elif attention_mask.dtype == torch.bool:  # True = may attend
        scores = scores.masked_fill(~attention_mask[..., :k_len], min_value)
    else:  # additive float mask (eager)
        scores = scores + attention_mask[..., :k_len]
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    for hook in hooks:
        pattern = hook(pattern)
    if dropout and module.training:
        pattern = nn.functional.dropout(pattern, p=dropout, training=True)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def _make_attention(base: str) -> Callable:
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        hooks = PATTERN_HOOKS.get(module)
        if not hooks:
            fn = _original_function(base, module)
            return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        softcap = kwargs.get("softcap")
        return eager_with_pattern(module, query, key, value, attention_mask, hooks, scaling, dropout, softcap)

    return attention


def hooked_implementation(base: str) -> str:
    """Register (once) and return the name of the pattern-exposing implementation wrapping `base`."""
    if base not in SUPPORTED_BASES:
        raise ValueError(
            f"hooking attn.pattern needs the model loaded with attn_implementation 'sdpa' or 'eager', not {base!r}; "
            "reload it with ls.load(..., attn_implementation='sdpa')."
        )
    name = f"lmscope_{base}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_attention(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name
