"""`lmscope ioi`: the IOI circuit analysis as one HTML report."""

from __future__ import annotations

from ..causal.ioi_report import IOIOptions
from .flags import add_flags, add_model_flag, build

HELP = "IOI circuit analysis: patching, attribution, path patching -> ioi_report.html"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, IOIOptions)


def run(args) -> None:
    from ..causal.ioi_report import write_ioi_report
    from ..model import load

    opts = build(IOIOptions, args)
    model = load(args.model)
    report, path = write_ioi_report(model, opts.out, n=opts.n, n_eval=opts.n_eval, seed=opts.seed)
    for row in report.roles:
        print(f"  {row['role']:20s} head {row['head']}")
    agreement = report.atp_agreement["attn.z per head"]["spearman"]
    print(f"attribution vs exact (heads): Spearman {agreement:.2f}")
    print(f"wrote {path}")
