"""The lab's model: a Hugging Face GPT2LMHeadModel, so every checkpoint is a plain HF folder lmscope loads.

How each LabConfig option maps onto GPT2Config (pre-LayerNorm blocks, learned positions, biases, untied
embedding and unembedding, no dropout):

    activation relu  -> activation_function "relu"
    activation gelu  -> "gelu" (exact, erf)
    activation none  -> "linear" (the MLP is two matrices with nothing between them)
    activation solu  -> "solu": x * softmax(x) over the neurons, then LayerNorm without gain or bias (Elhage
                        et al. 2022; a learned gain and bias would fold into c_proj). transformers has no SoLU,
                        so importing lmscope registers it in transformers' ACT2FN; a SoLU checkpoint loads in
                        plain transformers only after `import lmscope`.
    attn_only        -> GPT2Config has no "no MLP" and its Conv1D cannot be 0 wide, so every block keeps a
                        one-neuron linear MLP whose weights and biases are zero and frozen: it adds exactly 0
                        (the mlp sites exist, with d_mlp 1 and always 0). config.json marks it "attn_only".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import LabConfig

HF_ACTIVATION = {"relu": "relu", "gelu": "gelu", "none": "linear", "solu": "solu"}


class SoLU(nn.Module):
    """Softmax linear unit: LayerNorm(x * softmax(x)) over the last dimension (no learned gain or bias)."""

    def forward(self, x: Tensor) -> Tensor:
        y = x * torch.softmax(x, dim=-1)
        return nn.functional.layer_norm(y, y.shape[-1:], eps=1e-5)


def register_solu() -> None:
    """Make "solu" an activation_function transformers knows (GPT2MLP looks it up in ACT2FN)."""
    from transformers.activations import ACT2FN

    if "solu" not in ACT2FN:
        ACT2FN["solu"] = SoLU


def hf_config(cfg: LabConfig, vocab_size: int, bos_id: int | None, eos_id: int | None, pad_id: int | None):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.ctx_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=1 if cfg.attn_only else cfg.d_mlp,
        activation_function="linear" if cfg.attn_only else HF_ACTIVATION[cfg.activation],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attn_only=cfg.attn_only,
    )


def build_model(cfg: LabConfig, tokenizer):
    """A freshly initialised GPT2LMHeadModel for `cfg` (seeded by cfg.seed), vocabulary = len(tokenizer)."""
    from transformers import GPT2LMHeadModel

    register_solu()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = hf_config(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, pad)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(config).to(cfg.device)
    if cfg.attn_only:
        for param in (p for block in model.transformer.h for p in block.mlp.parameters()):
            nn.init.zeros_(param)
            param.requires_grad_(False)
    return model.train()
