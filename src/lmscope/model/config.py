"""The architecture facts lmscope needs about a model, read off its Hugging Face config."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # "llama", "gpt2" or "gpt_neox": the adapter that maps sites onto modules
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int  # < n_heads for grouped-query attention
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str
    normalization: str  # "rms" or "layer"
    gated_mlp: bool  # GLU MLP (Llama): mlp.post = act(gate(x)) * up(x)
    positional: str  # "rotary" or "learned"
    rotary_base: float | None = None
    parallel_residual: bool = False  # GPT-NeoX: attention and MLP both read resid_pre
    name: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
