"""Contrast tasks: clean/corrupt prompt pairs with answer tokens (IOI and user-built)."""

from .contrast import ContrastTask, single_token_id
from .ioi import ioi

__all__ = ["ContrastTask", "ioi", "single_token_id"]
