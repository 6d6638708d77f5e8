"""`lmscope das`: DAS on IOI's name-order signal, then the illusion audit of the subspace it found."""

from __future__ import annotations

from dataclasses import asdict

from ..causal.das_report import DASOptions
from .flags import add_flags, add_model_flag, build

HELP = "DAS on IOI's name-order signal + the illusion audit -> run folder"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, DASOptions, skip=("subspace",))


def run(args, options: type[DASOptions] = DASOptions) -> None:
    """Also `lmscope audit`'s (options=AuditOptions): the same run, on a given subspace."""
    from ..causal.das_report import run_das_audit
    from ..model import load

    opts = asdict(build(options, args))
    model = load(args.model)
    res = run_das_audit(model, **opts, model_name=args.model or "SmolLM2-135M-Instruct")
    if res.das is not None:
        held = res.das.held_out
        print(
            f"DAS held out: IIA {held.iia:.2f}, logit difference lost {held.fldd:.0%}, flipped {held.flipped:.0%}"
        )
    for row in res.audit.table():
        print(
            f"  {row['patch']:18s} LD {row['logit_diff']:+.2f}  lost {row['fldd']:6.0%}  flipped {row['flipped']:4.0%}"
        )
    print(f"verdict: {res.audit.verdict}")
    for reason in res.audit.reasons:
        print(f"  - {reason}")
    print(f"wrote {res.run_dir / 'report.html'}")
