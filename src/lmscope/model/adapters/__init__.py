"""Architecture adapters, looked up by the Hugging Face `config.model_type`."""

from __future__ import annotations

from .base import (
    Adapter,
    HookSpec,
    LayerParts,
    ModelParts,
    QKVWeights,
    global_specs,
    in_out_weight,
    layer_specs,
)
from .gpt2 import ADAPTER as GPT2
from .llama import ADAPTER as LLAMA
from .neox import ADAPTER as NEOX

ADAPTERS: dict[str, Adapter] = {t: a for a in (LLAMA, GPT2, NEOX) for t in a.model_types}


def adapter_for(hf_config) -> Adapter:
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in ADAPTERS:
        raise NotImplementedError(
            f"lmscope has no adapter for model_type {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}. "
            "An adapter is one small file in lmscope/model/adapters/ saying where the blocks, attention and MLP "
            "modules are; see llama.py for a template."
        )
    return ADAPTERS[model_type]


__all__ = [
    "ADAPTERS",
    "Adapter",
    "HookSpec",
    "LayerParts",
    "ModelParts",
    "QKVWeights",
    "adapter_for",
    "global_specs",
    "in_out_weight",
    "layer_specs",
]
