"""Transcoders, the replacement model and attribution graphs between features, checked by intervention.

tcs = train_transcoders(model, dataset, TopKConfig(d_in=d, d_sae=8 * d, k=16), "runs/tc", skip=True)
graph = trace(model, tcs, "When Mary and John went to the store, John gave a drink to", target=" Mary")
"""

from .attribution import Attribution, Nodes, attribute
from .replacement import Replacement, build_replacement
from .train import TranscoderEval, evaluate_transcoders, train_transcoders
from .transcoders import TranscoderSet

__all__ = [
    "Attribution",
    "Nodes",
    "Replacement",
    "TranscoderEval",
    "TranscoderSet",
    "attribute",
    "build_replacement",
    "evaluate_transcoders",
    "train_transcoders",
]
