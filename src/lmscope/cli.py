"""The `lmscope` command. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="hub id, local HF folder or .gguf file (default: the bundled SmolLM2-135M-Instruct)",
    )


def _cmd_info(args) -> None:
    from .model import cache_root, load
    from .tour import describe

    model = load(args.model)
    print(describe(model))
    if model.adapter.notes:
        print(f"notes        {model.adapter.notes}")
    print(f"cache        {cache_root()}")


def _cmd_sites(args) -> None:
    from .model import load
    from .model.sites import site_shape

    model = load(args.model)
    names = model.resolve_sites([args.filter]) if args.filter else model.sites
    for name in names:
        print(f"{name:32s} {site_shape(model.cfg, name)}")


def _cmd_run(args) -> None:
    import torch

    from .model import load
    from .tour import top_predictions

    if not args.text.strip():
        raise ValueError('empty prompt: give some text, e.g. lmscope run "The capital of France is"')
    model = load(args.model)
    print("tokens: " + " | ".join(model.to_str_tokens(args.text)))
    with torch.no_grad():
        logits = model(args.text)
    for text, p in top_predictions(model, logits[0], args.top_k):
        print(f"  {text!r:>16}  {p:.4f}")


def _cmd_tour(args) -> None:
    from .tour import run_tour

    run_tour(args.model, top_k=args.top_k)


def _cmd_ioi(args) -> None:
    from .causal.ioi_report import write_ioi_report
    from .model import load

    if args.n < 2:
        raise ValueError("--n must be at least 2 prompt pairs")
    model = load(args.model)
    report, path = write_ioi_report(model, args.out, n=args.n, n_eval=args.n_eval, seed=args.seed)
    for row in report.roles:
        print(f"  {row['role']:20s} head {row['head']}")
    agreement = report.atp_agreement["attn.z per head"]["spearman"]
    print(f"attribution vs exact (heads): Spearman {agreement:.2f}")
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmscope", description="Mechanistic interpretability workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="the model's architecture and where lmscope caches it")
    _model_arg(p)
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("sites", help="list every site (hookable activation) with its shape")
    _model_arg(p)
    p.add_argument("--filter", help="a glob such as 'blocks.3.*' or 'blocks.*.attn.z'")
    p.set_defaults(fn=_cmd_sites)
    p = sub.add_parser("run", help="run a prompt and show the top next-token predictions")
    _model_arg(p)
    p.add_argument("text")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(fn=_cmd_run)
    p = sub.add_parser(
        "ioi", help="IOI circuit analysis: patching, attribution, path patching -> ioi_report.html"
    )
    _model_arg(p)
    p.add_argument("--n", type=int, default=20, help="prompt pairs for the patching sweeps (default 20)")
    p.add_argument("--n-eval", type=int, default=100, help="prompt pairs for accuracy (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ioi_report.html")
    p.set_defaults(fn=_cmd_ioi)
    p = sub.add_parser("tour", help="the guided tour on the bundled model")
    _model_arg(p)
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(fn=_cmd_tour)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, OSError, NotImplementedError) as err:
        print(f"lmscope {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
