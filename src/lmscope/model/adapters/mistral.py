"""Mistral: Llama's layout exactly (same module names, so every site is read where llama.py says), plus
sliding-window attention on every layer when `config.sliding_window` is set: a query sees only the last
`sliding_window` positions. The window lives in the attention mask transformers builds, so attn.pattern
is 0 outside it; cfg.sliding_window / cfg.sliding_layers record it.
"""

from .llama import llama_like

ADAPTER = llama_like(
    "mistral",
    ("mistral",),
    notes="Llama layout; sliding-window attention on every layer (cfg.sliding_window).",
)
