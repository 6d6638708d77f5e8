"""Flags from dataclasses: a command's options are a dataclass, its flags are built from the fields.

So a default is written once, in the dataclass, and `--help` shows it. Per field (all optional), in
``field(metadata={...})``:

    help        the flag's help; "(default: X)" is added when the default is not None/False/True
    flag        the flag's name when it is not --field-name (e.g. "--restart" for ``resume: bool = True``)
    positional  True: an argument, not a flag (with a default it may be left out)
    choices     the allowed values (a Literal type gives them too)
    parse       str -> value, for what argparse's type= cannot say (e.g. "2M" -> 2_000_000)
    sep         a list given as one flag split on this, e.g. "," for --labels english,french
    metavar, nargs, action ("append")   passed to argparse as they are

Types: int, float, str, bool, X | None, list[X] / tuple[X, ...] (one flag, several values). A bool with
default False is a switch (--name); with default True, --no-name (or ``flag``) switches it off.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    require: Iterable[str] = (),
    helps: dict[str, str] | None = None,
    unset: bool = False,
) -> None:
    """Add one argument per field of dataclass `cls` to `parser`.

    only/skip: which fields; require: fields that must be given although they have a default;
    helps: help for fields whose metadata has none (a config owned by the library, e.g. a TrainConfig);
    unset: the flags default to None and are hidden from --help, so the command can tell they were given
    and refuse them with its own message (e.g. training flags where nothing is trained).
    """
    hints = typing.get_type_hints(cls)
    only = None if only is None else set(only)
    skip, require, helps = set(skip), set(require), helps or {}
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        meta = dict(f.metadata)
        kind, scalar, choices = _kind(hints[f.name])
        default = _default(f)
        kwargs: dict = {}
        help_text = meta.get("help", helps.get(f.name, ""))
        if unset:
            default, help_text = None, argparse.SUPPRESS
        elif default is not dataclasses.MISSING and default is not None and not isinstance(default, bool):
            help_text = (help_text + " " if help_text else "") + "(default: %(default)s)"
        if meta.get("positional"):
            names = [f.name]
            if default is not dataclasses.MISSING:
                kwargs.update(nargs="?", default=default)
        elif kind is bool:
            if default is True:
                names = [meta.get("flag", "--no-" + f.name.replace("_", "-"))]
                kwargs.update(action="store_false", dest=f.name, default=True)
            else:
                names = [meta.get("flag", "--" + f.name.replace("_", "-"))]
                kwargs.update(action="store_true", dest=f.name, default=bool(default))
            parser.add_argument(*names, help=help_text, **kwargs)
            continue
        else:
            names = [meta.get("flag", "--" + f.name.replace("_", "-"))]
            kwargs["dest"] = f.name
            if default is dataclasses.MISSING or f.name in require:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
        if "parse" in meta:
            kwargs["type"] = _argparse_type(meta["parse"])
        elif "sep" in meta:
            kwargs["type"] = _splitter(meta["sep"], scalar)
        else:
            kwargs["type"] = scalar
            if kind is list:
                kwargs["nargs"] = "+"
        for key in ("metavar", "nargs", "action"):
            if key in meta:
                kwargs[key] = meta[key]
        if kwargs.get("action") == "append":
            kwargs.pop("nargs", None)
        if meta.get("choices") or choices:
            kwargs["choices"] = list(meta.get("choices") or choices)
        parser.add_argument(*names, help=help_text, **kwargs)


def build(cls: type, args: argparse.Namespace, **extra):
    """The dataclass `cls` filled from parsed `args` (fields that have no flag keep their default)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **extra})


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _kind(hint) -> tuple[type, type, tuple]:
    """(bool | list | scalar, the scalar type for argparse, Literal choices) of a type hint."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None -> X; a wider union needs metadata "parse"
        options = [p for p in params if p is not type(None)]
        return _kind(options[0]) if len(options) == 1 else (str, str, ())
    if origin is typing.Literal:
        return str, type(params[0]), params
    if origin in (list, tuple) or hint in (list, tuple):
        inner = params[0] if params else str
        return list, _kind(inner)[1], ()
    if hint is bool:
        return bool, bool, ()
    return hint, hint if hint in (int, float, str) else str, ()


def _argparse_type(parse):
    """`parse` whose ValueError argparse prints as it is (else it says only "invalid parse value")."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__
    return convert


def _splitter(sep: str, scalar: type):
    """'a,b,,c' -> ['a', 'b', 'c'] (empty parts dropped; nothing left: None), each part `scalar`'d."""

    def split(text: str) -> list | None:
        return [scalar(part.strip()) for part in text.split(sep) if part.strip()] or None

    split.__name__ = f"{scalar.__name__} list"  # argparse names the type in its error message
    return split


def add_model_flag(parser: argparse.ArgumentParser) -> None:
    """--model, the same for every command that loads one (the library takes a loaded Model, not a name)."""
    parser.add_argument(
        "--model",
        default=None,
        help="a bundled model (`lmscope models`), hub id, local HF folder or .gguf file "
        "(default: the bundled SmolLM2-135M-Instruct)",
    )
