"""What `lmscope lab train` sets: the model and its training recipe (LabConfig), and where data and run go.

Every default lives here once; the CLI flags are built from these fields (cli/flags.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

ACTIVATIONS = ("relu", "gelu", "solu", "none")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "warmup", "cosine")
# lr when none is given: SGD needs a far larger step than Adam to move a transformer in a few hundred steps.
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.1}


@dataclass
class LabConfig:
    """A small decoder-only transformer (GPT-2 class) and how to train it. See lab/model.py for the mapping
    of each option onto a Hugging Face GPT2Config."""

    n_layers: int = field(default=1, metadata={"help": "transformer blocks, 1-4"})
    d_model: int = field(default=64, metadata={"help": "residual stream width"})
    n_heads: int = field(default=4, metadata={"help": "attention heads per layer (must divide d_model)"})
    d_mlp: int = field(default=256, metadata={"help": "MLP neurons per layer"})
    activation: Literal["relu", "gelu", "solu", "none"] = field(
        default="relu", metadata={"help": "MLP activation (none = a linear MLP)"}
    )
    attn_only: bool = field(default=False, metadata={"help": "no MLPs (attention-only model)"})
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = field(
        default=None, metadata={"help": "peak learning rate (default: 1e-3 for adam, 0.1 for sgd)"}
    )
    schedule: Literal["constant", "warmup", "cosine"] = field(
        default="cosine",
        metadata={
            "help": "constant; warmup = linear warm-up then constant; cosine = warm-up then cosine decay"
        },
    )
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps (warmup, cosine)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (AdamW / SGD)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0 = off)"})
    steps: int = field(default=600, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=32, metadata={"help": "contexts per step"})
    ctx_len: int = field(default=128, metadata={"help": "tokens per context"})
    seed: int = field(default=0, metadata={"help": "initialisation and data order"})
    vocab: int = field(
        default=2048,
        metadata={
            "help": "tokens kept from the base tokenizer: the most frequent in the train split plus every "
            "piece needed to build them (lab/vocab.py); 0 = the full tokenizer"
        },
    )
    train_tokens: int | None = field(
        default=None, metadata={"help": "train tokens to use (error if the corpus has fewer; default: all)"}
    )
    eval_tokens: int = field(default=50_000, metadata={"help": "held-out tokens for the evaluation"})
    n_checkpoints: int = field(
        default=12, metadata={"help": "log-spaced checkpoints (step 0 and the last included)"}
    )
    device: str = "cpu"

    def __post_init__(self):
        self.validate()

    @property
    def peak_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def validate(self) -> None:
        """Raise ValueError naming the bad field, what it was and what is allowed."""
        choices = {"activation": ACTIVATIONS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 1 <= self.n_layers <= 4:
            raise ValueError(f"n_layers must be 1-4 (a lab model is small), got {self.n_layers}")
        positive = ("d_model", "n_heads", "steps", "batch_size", "eval_tokens", "n_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if not self.attn_only and self.d_mlp < 1:
            raise ValueError(f"d_mlp must be at least 1 (or set attn_only for no MLP), got {self.d_mlp}")
        if self.ctx_len < 2:
            raise ValueError(f"ctx_len must be at least 2 (BOS and a token), got {self.ctx_len}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.vocab < 0:
            raise ValueError(f"vocab must be 0 (the full tokenizer) or a vocabulary size, got {self.vocab}")
        if self.train_tokens is not None and self.train_tokens < self.ctx_len:
            raise ValueError(
                f"train_tokens ({self.train_tokens}) must be at least one context ({self.ctx_len})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabTrainOptions:
    """Where `lmscope lab train` reads and writes (the recipe is LabConfig)."""

    action: str = field(metadata={"positional": True, "choices": ("train",), "help": "train: train a model"})
    out: str = field(metadata={"help": "run folder (checkpoints/, metrics.json, run.json)"})
    corpus: str | None = field(
        default=None,
        metadata={"help": "corpus folder from `lmscope corpus build` (default: the default corpus)"},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "base tokenizer: a folder with a Hugging Face tokenizer (default: SmolLM2's)"},
    )
    resume: bool = field(
        default=True,
        metadata={"flag": "--restart", "help": "start over instead of resuming an unfinished run"},
    )
