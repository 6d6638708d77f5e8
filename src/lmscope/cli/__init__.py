"""The `lmscope` command: one small module per command; flags are built from the dataclass each one fills.

How to add a command module:
1. Put the options in a dataclass next to the code the command configures (not in cli/): one field per
   flag, ``field(default=..., metadata={"help": "..."})``; that default is the only one (see cli/flags.py).
2. Write cli/NAME.py with ``HELP = "one line"``, ``add_arguments(parser)`` calling ``add_flags(parser,
   Options)`` (plus ``add_model_flag(parser)`` if it loads a model) and ``run(args)``.
3. ``run`` builds ``build(Options, args)``, imports the library inside the function (``lmscope --help``
   stays fast), calls it and prints a short summary; bad input raises ValueError / FileNotFoundError.
4. Add NAME to COMMANDS below (the order of `lmscope --help`).
5. Test it with ``main([NAME, ...]) == 0`` on a tiny model (tests/conftest.py) and look at `lmscope NAME --help`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..features.probe_report import int_list as _int_list  # noqa: F401  (kept importable for old callers)

COMMANDS = (
    "models",
    "info",
    "sites",
    "run",
    "tour",
    "ioi",
    "explore",
    "export",
    "das",
    "audit",
    "corpus",
    "harvest",
    "lens",
    "sae",
    "circuits",
    "probe",
    "neurons",
    "toy",
    "steer",
    "lab",
    "graph",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmscope", description="Mechanistic interpretability workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(fn=module.run)
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
