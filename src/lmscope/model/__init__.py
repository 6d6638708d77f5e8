"""The core: load a model, name its sites, run it with caches and interventions, read its weights."""

from .cache import ActivationCache
from .config import ModelConfig
from .generate import Generation
from .interventions import Ablate, AddDirection, Hook, Intervention, Patch, ProjectOut, SubspacePatch
from .loading import bundled_gguf, cache_root, load
from .model import Model
from .sites import SiteError
from .weights import Weights

__all__ = [
    "ActivationCache",
    "AddDirection",
    "Generation",
    "Ablate",
    "Hook",
    "Intervention",
    "Model",
    "ModelConfig",
    "Patch",
    "ProjectOut",
    "SiteError",
    "SubspacePatch",
    "Weights",
    "bundled_gguf",
    "cache_root",
    "load",
]
