"""Causal methods: activation patching sweeps, attribution patching, path patching, head inspection."""
