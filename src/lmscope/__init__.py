"""lmscope: a workbench for mechanistic interpretability of Hugging Face causal language models."""

from .model import (
    Ablate,
    ActivationCache,
    AddDirection,
    Hook,
    Intervention,
    Model,
    ModelConfig,
    Patch,
    ProjectOut,
    SiteError,
    SubspacePatch,
    Weights,
    load,
)

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "ActivationCache",
    "AddDirection",
    "Hook",
    "Intervention",
    "Model",
    "ModelConfig",
    "Patch",
    "ProjectOut",
    "SiteError",
    "SubspacePatch",
    "Weights",
    "load",
]
