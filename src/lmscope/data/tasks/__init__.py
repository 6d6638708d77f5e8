"""Contrast tasks: clean/corrupt prompt pairs with answer tokens (IOI and user-built)."""

from .contrast import ContrastTask, single_token_id

__all__ = ["ContrastTask", "single_token_id"]
