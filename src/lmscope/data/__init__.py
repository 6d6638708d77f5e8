"""Data: generated contrast tasks (IOI) and, later, corpora, token datasets and the activation store."""
