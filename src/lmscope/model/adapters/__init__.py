"""Architecture adapters, looked up by the Hugging Face `config.model_type`."""

from __future__ import annotations

import difflib

from .base import (
    Adapter,
    HookSpec,
    LayerParts,
    MLPWeights,
    ModelParts,
    QKVWeights,
    global_specs,
    in_out_weight,
    layer_specs,
)
from .gemma import GEMMA, GEMMA2, GEMMA3
from .gpt2 import ADAPTER as GPT2
from .llama import ADAPTER as LLAMA
from .mistral import ADAPTER as MISTRAL
from .mixtral import ADAPTER as MIXTRAL
from .neox import ADAPTER as NEOX
from .olmo2 import ADAPTER as OLMO2
from .phi3 import ADAPTER as PHI3
from .qwen import QWEN2, QWEN3

_FAMILIES = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, GEMMA3, PHI3, OLMO2, MIXTRAL, GPT2, NEOX)
ADAPTERS: dict[str, Adapter] = {t: a for a in _FAMILIES for t in a.model_types}


class UnsupportedModelError(NotImplementedError, ValueError):
    """A Hugging Face model_type lmscope has no adapter for. The message names the supported ones."""


def adapter_for(hf_config) -> Adapter:
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in ADAPTERS:
        close = difflib.get_close_matches(str(model_type), list(ADAPTERS), n=1, cutoff=0.5)
        hint = f" The closest supported one is {close[0]!r}." if close else ""
        raise UnsupportedModelError(
            f"lmscope has no adapter for model_type {model_type!r}.{hint} Supported: {', '.join(sorted(ADAPTERS))}. "
            "If the model is laid out like one of these, an adapter is a few lines in lmscope/model/adapters/ "
            "(see mistral.py, which reuses llama.py)."
        )
    return ADAPTERS[model_type]


__all__ = [
    "ADAPTERS",
    "Adapter",
    "HookSpec",
    "LayerParts",
    "MLPWeights",
    "ModelParts",
    "UnsupportedModelError",
    "QKVWeights",
    "adapter_for",
    "global_specs",
    "in_out_weight",
    "layer_specs",
]
