"""``fastprep prepare --recipe recipe.toml``: a data recipe in a file.

A recipe file holds the run's options (any ``prepare`` flag without its dashes: ``seq_len =
2048`` is ``--seq-len 2048``) and its sources, one ``[[source]]`` table each with ``paths``,
``weight`` (a share of output tokens) and optionally the source's own record shape and field
names (``shape``, ``text_field``, ``prompt_field``, ``completion_field``, ``messages_field``,
``system_prompt``, ``fill``)::

    tokenizer = "tok"
    seq_len = 2048
    out = "ds"
    val_fraction = 0.01

    [[source]]
    name = "support-chats"
    paths = ["data/support/*.jsonl"]
    weight = 0.7
    shape = "chat"
    messages_field = "conversation"

    [[source]]
    name = "general"
    paths = ["data/general.jsonl"]
    weight = 0.3

Options become flags placed before the command line's own, so a flag given on the command line
wins. Paths are relative to the folder the command runs in, as on the command line. Read with
``tomllib`` (``tomli`` on Python 3.10).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .flags import add_options, from_args
from .stages.mix import Source
from .stages.records import RecordConfig

RECORD_KEYS = ("shape", "text_field", "prompt_field", "completion_field", "messages_field",
               "system_prompt", "fill")


class RecipeError(ValueError):
    """A recipe file that cannot be read or used."""


def load(path: str) -> dict[str, Any]:
    """The parsed TOML of a recipe file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise RecipeError("--recipe needs tomli on Python 3.10: pip install tomli") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise RecipeError(f"--recipe {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"--recipe {path}: not valid TOML ({e})") from None


def _flag_args(key: str, value: Any, parser: argparse.ArgumentParser, where: str) -> list[str]:
    flag = "--" + key.replace("_", "-")
    action = parser._option_string_actions.get(flag)
    if action is None or flag in ("--recipe", "--mix", "--help"):
        raise RecipeError(f"{where}: {key!r} is not a prepare option (see fastprep prepare --help)")
    if isinstance(value, bool):
        if action.nargs != 0:
            raise RecipeError(f"{where}: {key} = {value} needs a value, not true/false")
        return [flag] if value else ["--no-" + flag[2:]]
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (str, int, float)) for v in items):
        raise RecipeError(f"{where}: {key} must be a string, a number, or a list of them")
    strs = [str(v) for v in items]
    if isinstance(action, argparse._AppendAction):
        return [x for v in strs for x in (flag, v)]
    return [flag, *strs]


def options_argv(recipe: dict[str, Any], parser: argparse.ArgumentParser, where: str) -> list[str]:
    """The recipe's options as ``prepare`` flags (everything but its sources)."""
    out: list[str] = []
    for key, value in recipe.items():
        if key == "source":
            continue
        if isinstance(value, dict):
            raise RecipeError(f"{where}: [{key}] is not a recipe table; options go at the top "
                              f"level and sources in [[source]] tables")
        out += _flag_args(key, value, parser, where)
    return out


def _records(table: dict[str, Any], base: RecordConfig, where: str) -> RecordConfig | None:
    """A source's own record mapping: the run's with the source's keys replaced."""
    given = {k: table[k] for k in RECORD_KEYS if k in table}
    if not given:
        return None
    p = argparse.ArgumentParser(prog=where, add_help=False, exit_on_error=False)
    add_options(p, RecordConfig)
    argv: list[str] = []
    for key, value in given.items():
        values = value if isinstance(value, list) else [value]
        flag = "--fill" if key == "fill" else "--" + key.replace("_", "-")
        argv += [x for v in values for x in (flag, str(v))]
    try:
        ns = p.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        raise RecipeError(f"{where}: {e}") from None
    changed = {k if k != "fill" else "defaults" for k in given}
    own = from_args(RecordConfig, ns)
    return RecordConfig(**{f: getattr(own if f in changed else base, f)
                           for f in RecordConfig.__dataclass_fields__})


def sources(recipe: dict[str, Any], base: RecordConfig, where: str) -> tuple[Source, ...]:
    """The recipe's ``[[source]]`` tables as mix sources."""
    tables = recipe.get("source", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RecipeError(f"{where}: sources go in [[source]] tables")
    out = []
    allowed = {"name", "paths", "weight", *RECORD_KEYS}
    for k, t in enumerate(tables):
        at = f"{where} source {k + 1}"
        unknown = sorted(set(t) - allowed)
        if unknown:
            raise RecipeError(f"{at}: unknown key(s) {', '.join(unknown)}; a source has "
                              f"{', '.join(sorted(allowed))}")
        paths = t.get("paths")
        paths = [paths] if isinstance(paths, str) else paths
        if not paths or not all(isinstance(x, str) for x in paths):
            raise RecipeError(f"{at}: paths must be a path or a list of paths")
        name = str(t.get("name") or Path(paths[0]).stem)
        try:
            out.append(Source(name=name, paths=tuple(paths), weight=t.get("weight", 0),
                              records=_records(t, base, at)))
        except RecipeError:
            raise  # already names its place
        except ValueError as e:
            raise RecipeError(f"{at}: {e}") from None
    return tuple(out)


def mix_sources(items: list[tuple[str, float]]) -> tuple[Source, ...]:
    """``--mix PATH=WEIGHT ...`` as sources named after their paths."""
    return tuple(Source(name=path, paths=(path,), weight=weight) for path, weight in items)
