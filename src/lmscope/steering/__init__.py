"""Steering with its side effects: push along a direction, measure what it does and what else moves.

from lmscope.steering import Direction, Target, sweep, save_run
d = Direction.from_sae("runs/sae", feature=123)      # or from_das / from_probe / from_neuron / mean_difference
res = sweep(model, d, None, [0, 2, 4, 8], prompts, {"french": fr, "python": py},
            target=Target.corpus_label("french"), saes=[sae])
res.to_dict(); save_run([res, other], "runs/steer")  # one page comparing the directions
"""

from .direction import Direction, fit_probe, text_means
from .report import steering_page
from .result import SteeringResult, save_run
from .select import label_feature, label_neuron
from .sweep import sweep
from .target import Target

__all__ = [
    "Direction",
    "SteeringResult",
    "Target",
    "fit_probe",
    "label_feature",
    "label_neuron",
    "save_run",
    "steering_page",
    "sweep",
    "text_means",
]
