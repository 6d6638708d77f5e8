"""Feature analysis: sparse probes, neurons, privileged bases (and, beside them, sparse autoencoders)."""
