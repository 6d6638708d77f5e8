"""The architecture facts lmscope needs about a model, read off its Hugging Face config."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # the adapter that maps sites onto modules: "llama", "gemma2", "mixtral", "gpt2", ...
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
    # Where the block's norms sit: "pre" (norm -> sublayer -> add), "sandwich" (Gemma 2/3: pre-norm and a
    # post-norm on the sublayer output before the add), "post" (OLMo-2: sublayer -> norm -> add, no pre-norm).
    norm_placement: str = "pre"
    norm_offset: float = 0.0  # the norms scale by (norm_offset + weight): 1.0 for Gemma's (1 + w) RMSNorm
    qk_norm: str = (
        ""  # "head": RMSNorm on each head's q and k (Qwen3, Gemma 3); "all": over all heads (OLMo-2)
    )
    embed_scale: float = 1.0  # the embedding is multiplied by this (Gemma: sqrt(d_model))
    attn_scale: float | None = None  # scores = q.k * attn_scale; None = d_head ** -0.5
    attn_softcap: float | None = None  # scores -> c * tanh(scores / c) before the mask (Gemma 2)
    logit_softcap: float | None = None  # logits -> c * tanh(logits / c) (Gemma 2/3)
    sliding_window: int | None = None  # a query sees the last `sliding_window` positions (itself included)
    sliding_layers: tuple[int, ...] = ()  # the layers that use the sliding window
    n_experts: int = 0  # mixture of experts: experts per layer (0 = a dense MLP)
    experts_per_token: int = 0  # mixture of experts: the top-k experts each token is routed to

    def to_dict(self) -> dict:
        return asdict(self)
