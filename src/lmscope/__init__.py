"""lmscope: a workbench for mechanistic interpretability of Hugging Face causal language models."""

from .causal.attribution import attribution_patch
from .causal.audit import AuditResult, audit
from .causal.das import DASResult, das
from .causal.heads import direct_logit_attribution
from .causal.path import path_patch
from .causal.sweep import patch_sweep
from . import lab, steering
from .data import tasks
from .data.tasks import ContrastTask
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
    "AuditResult",
    "DASResult",
    "audit",
    "das",
    "ContrastTask",
    "attribution_patch",
    "direct_logit_attribution",
    "path_patch",
    "patch_sweep",
    "tasks",
    "lab",
    "steering",
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
