"""`lmscope audit`: the illusion audit of a saved or candidate subspace (nothing is trained)."""

from __future__ import annotations

from ..causal.das_report import TRAINING, AuditOptions
from . import das
from .flags import add_flags, add_model_flag

HELP = "audit a saved or candidate subspace for the MLP-in-the-middle illusion"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, AuditOptions, skip=TRAINING, require=("subspace",))
    # Accepted but hidden and unset, so that `--k 2` is refused with the reason (run_das_audit's error)
    # instead of being silently ignored: an audited subspace is not trained.
    add_flags(parser, AuditOptions, only=TRAINING, unset=True)


def run(args) -> None:
    das.run(args, options=AuditOptions)
