"""Config fields that carry their command-line flag: one default and one help text per field.

Every config dataclass declares its fields with :func:`option`; :func:`add_options` builds an
``argparse`` parser from them (nested config dataclasses become argument groups) and
:func:`from_args` builds the config back from the parsed arguments. So ``fastprep prepare`` and
``fastprep train`` have exactly the defaults and choices of the configs, written once.

Types come from the annotations: ``Literal[...]`` gives the choices, ``X | None`` an optional
``X``, ``bool`` a ``--flag/--no-flag`` pair (or, with ``invert``, one flag that sets False).
Deprecated spellings (``aliases``) still work for one release and print a warning naming the
new flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

_MISSING: Any = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, flag: str | None = None,
           choices: Sequence[Any] | None = None, metavar: str | None = None,
           positional: bool = False, required: bool = False,
           parse: Callable[[str], Any] | None = None, repeat: bool = False, invert: bool = False,
           aliases: tuple[str, ...] = (), cli: bool = True,
           default_factory: Callable[[], Any] = _MISSING) -> Any:
    """A dataclass field with its flag.

    flag: the flag (default ``--field-name``). positional: a positional ``nargs="+"`` argument
    (a tuple field). repeat: a repeatable flag collected into a tuple, each item through
    ``parse``. invert: a bool field whose flag (e.g. ``--keep-control``) sets it to False.
    aliases: deprecated flags that still set this field. cli: False keeps it off the command line.
    """
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar,
            "positional": positional, "required": required, "parse": parse, "repeat": repeat,
            "invert": invert, "aliases": aliases, "cli": cli}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field[Any]) -> str:
    """The command-line flag of a config field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without ``| None``, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return tp, False


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class _Deprecated(argparse.Action):
    """A deprecated spelling: stores into the new flag's destination and warns once."""

    def __init__(self, *args: Any, new: str, inner: argparse.Action, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new, self.inner = new, inner

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"fastprep: warning: {option_string} is deprecated and will be removed in the next "
              f"release; use {self.new}", file=sys.stderr)
        self.inner(parser, ns, values, option_string)


def _kwargs(f: dataclasses.Field[Any], tp: Any, dest: str) -> dict[str, Any]:
    meta = f.metadata
    base, optional = _unwrap(tp)
    default = f.default if f.default is not _MISSING else (
        f.default_factory() if f.default_factory is not _MISSING else None)
    help_text = meta.get("help", "")
    kw: dict[str, Any] = {"dest": dest, "default": default}
    if base is not bool:
        kw["metavar"] = meta.get("metavar") or f.name.upper()
    if base is bool and meta.get("invert"):
        kw.update(action="store_false", default=default)
    elif base is bool:
        kw.update(action=argparse.BooleanOptionalAction)
    elif meta.get("repeat"):
        kw.update(action="append", default=None)
    else:
        choices = meta.get("choices")
        if choices is None and typing.get_origin(base) is typing.Literal:
            choices = typing.get_args(base)
        if choices is not None:
            kw["choices"] = list(choices)
            kw["type"] = type(next(iter(choices)))
            kw.pop("metavar")  # argparse shows the choices
        elif base in (int, float, str):
            kw["type"] = base
        if meta.get("parse") is not None:
            kw["type"] = meta["parse"]
    # argparse's BooleanOptionalAction shows its default itself
    shown = "" if base is bool or default is None or default in ((), "") else f" (default: {default})"
    kw["help"] = (help_text + shown).strip() or None
    if meta.get("required"):
        kw["required"] = True
        kw.pop("default")
    return kw


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add a flag for every :func:`option` field of config ``cls`` (nested configs recurse
    into argument groups of their own)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        dest = prefix + f.name
        if _is_config(tp):
            target = parser.add_argument_group(f.name) if isinstance(
                parser, argparse.ArgumentParser) else parser
            add_options(target, tp, dest + "__")
            continue
        if not f.metadata.get("cli", False):
            continue
        kw = _kwargs(f, tp, dest)
        if f.metadata.get("positional"):
            name = kw.pop("dest")
            parser.add_argument(name, nargs="+", metavar=f.metadata.get("metavar") or f.name.upper(),
                                help=kw.get("help"))
            continue
        action = parser.add_argument(flag_name(f), **kw)
        for alias in f.metadata.get("aliases", ()):
            parser.add_argument(alias, dest=dest, action=_Deprecated, new=flag_name(f),
                                inner=action, nargs=action.nargs if action.nargs is not None else None,
                                type=kw.get("type"), default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


def from_args(cls: type, ns: argparse.Namespace, prefix: str = "", **override: Any) -> Any:
    """The config ``cls`` described by parsed arguments (fields off the command line keep their
    defaults; ``override`` sets fields directly)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in override:
            values[f.name] = override[f.name]
            continue
        tp = hints[f.name]
        dest = prefix + f.name
        if _is_config(tp):
            values[f.name] = from_args(tp, ns, dest + "__")
            continue
        if not f.metadata.get("cli", False) or not hasattr(ns, dest):
            continue
        value = getattr(ns, dest)
        if f.metadata.get("repeat"):
            parse = f.metadata.get("parse") or (lambda s: s)
            value = tuple(parse(v) for v in value or ())
        elif f.metadata.get("positional"):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)
