"""Config dataclasses as CLI flags and TOML keys: one name per field, everywhere.

Each field of a config dataclass becomes `--field-name`, documented by the
string literal under the field in its class (the single source of help text).
Values are layered: dataclass defaults < preset < TOML file < flags.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap
from dataclasses import MISSING, fields
from functools import cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad config file or flag value; the message says what and where."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string right under each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _scalar_type(annotation: str) -> type:
    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if annotation.replace(" | None", "") == name:
            return typ
    return str


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field; every default is None so that given values can be told apart."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = None if f.default is MISSING else f.default
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")  # argparse formats help with %
        typ = _scalar_type(str(f.type))
        if typ is bool:
            names = [flag(f.name)]
            group.add_argument(*names, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            if f.name.startswith("enable_"):  # also accept the short negative, e.g. --no-prefix-caching
                group.add_argument(
                    flag("no_" + f.name[len("enable_"):]), dest=f.name, action="store_false", default=None,
                    help=argparse.SUPPRESS,
                )
        else:
            group.add_argument(flag(f.name), type=typ, default=None, metavar=typ.__name__.upper(), help=help_text)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` set explicitly on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def load_toml(path: str | Path, known: set[str]) -> dict[str, Any]:
    """A flat TOML table of field names (dashes or underscores); unknown keys are an error."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        out[name] = value
    return out


def pick(values: dict[str, Any], cls: type) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
