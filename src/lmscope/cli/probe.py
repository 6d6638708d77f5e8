"""`lmscope probe`: sparse probes over layers x k on a labelled corpus -> run folder."""

from __future__ import annotations

from ..features.probe_report import ProbeOptions
from .flags import add_flags, add_model_flag, build

HELP = "sparse probes over layers x k on a labelled corpus -> run folder (report.html, probe.json)"


def add_arguments(parser) -> None:
    add_model_flag(parser)
    add_flags(parser, ProbeOptions)


def run(args) -> None:
    from dataclasses import asdict

    from ..features.probe_report import run_probe
    from ..model import load

    opts = build(ProbeOptions, args)
    result = run_probe(load(args.model), **asdict(opts))
    for feature, s in result["summary"].items():
        print(
            f"  {feature:24s} best 1-sparse: L{s['best_layer_k1']} N{s['best_neuron_k1']} F1 {s['best_f1_k1']:.3f}"
            f" (rotated {s['rotated_f1_k1']:.3f})"
        )
    print(f"wrote {opts.out}")
