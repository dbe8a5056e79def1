"""Where settings come from besides config.json: command-line flags and CARVANA_<FIELD> variables.

Both are made from the fields of the config dataclasses (carvana.config), so a new setting is a
flag and an environment variable at once, parsed by the same `config.parse_value`. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping

from carvana.config import parse_value

ENV_PREFIX = "CARVANA_"
METAVARS = {
    "bool": "on|off",
    "size": "HxW",
    "shard": "i/n",
    "int": "N",
    "float": "X",
    "stages": "SCALE@UNTIL",
}


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` a user may set (from the CLI or the environment)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def flag_names(f: dataclasses.Field) -> list[str]:
    """The command-line flags of a field: --image-size, plus a short alias such as --lr."""
    names = ["--" + f.name.replace("_", "-")]
    if "flag" in f.metadata:
        names.append("--" + f.metadata["flag"])
    return names


def _show_default(value) -> str:
    if isinstance(value, bool) or value == "":
        return "on" if value else "off"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return str(value)


def add_arguments(parser, cls, skip: Iterable[str] = ()) -> None:
    """Add one flag per user-settable field of `cls` to an argparse parser, defaults shown.

    Flags the user does not give stay out of the namespace (argparse.SUPPRESS), so
    `given_settings` can tell which fields were asked for."""
    import argparse

    for f in cli_fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "shard":
            default = "/".join(map(str, default))

        def parse(text, name=f.name):
            try:
                return parse_value(cls, name, text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        kind = f.metadata.get("kind", f.type)
        optional = {"nargs": "?", "const": True} if kind == "bool" else {}
        parser.add_argument(
            *flag_names(f),
            dest=f.name,
            type=parse,
            default=argparse.SUPPRESS,
            metavar=METAVARS.get(kind, f.name.upper()),
            help=f"{f.metadata['help']} (default: {_show_default(default)})",
            **optional,
        )


def given_settings(args, cls) -> dict:
    """The fields of `cls` the user gave on the command line, with their parsed values."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if hasattr(args, f.name)}


def from_env(base, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX):
    """(base overridden by PREFIX<FIELD> variables, the names of the fields they set)."""
    environ = os.environ if environ is None else environ
    texts = {
        f.name: environ[prefix + f.name.upper()]
        for f in cli_fields(type(base))
        if environ.get(prefix + f.name.upper(), "").strip()
    }
    return base.with_texts(texts, where=prefix + "{NAME}"), frozenset(texts)
