"""Feature evaluations beyond reconstruction: sparse probing against neurons and a rotated basis, automatic
labels scored on held-out text, and absorption on a first-letter task. Each is a plain function returning a
JSON-ready dict, plus a function turning that dict into report sections."""

from .absorption import Words, absorption, absorption_sections, first_letter_vocab, word_activations
from .labels import auto_labels, labels_sections
from .probing import document_bases, probing_sections, sparse_probing

__all__ = [
    "Words",
    "absorption",
    "absorption_sections",
    "auto_labels",
    "document_bases",
    "first_letter_vocab",
    "labels_sections",
    "probing_sections",
    "sparse_probing",
    "word_activations",
]
