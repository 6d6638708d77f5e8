"""The training lab: train small transformers here; every checkpoint is a Hugging Face folder lmscope loads.

result = ls.lab.train_model(ls.lab.LabConfig(n_layers=2, activation="gelu"), "runs/lab", corpus="corpus/")
model = ls.load(result.checkpoints[-1])
"""

from .config import LabConfig, LabTrainOptions
from .model import SoLU, build_model, register_solu
from .train import LabResult, checkpoint_steps, heldout_loss, train_model
from .vocab import trim_tokenizer

register_solu()  # so SoLU checkpoints load anywhere lmscope is imported

__all__ = [
    "LabConfig",
    "LabResult",
    "LabTrainOptions",
    "SoLU",
    "build_model",
    "checkpoint_steps",
    "heldout_loss",
    "register_solu",
    "train_model",
    "trim_tokenizer",
]
