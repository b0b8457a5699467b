"""Presentation helpers shared by the subcommands: one JSON object for --json, rich tables otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any

from effml.errors import ConfigError


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def _default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def console():
    """A rich console; when stdout is not a terminal (a pipe, CI), wide enough for the tables."""
    from rich.console import Console

    con = Console()
    if not con.is_terminal:
        con = Console(width=140)
    return con


def parse_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    """'1,3,224,224' (or '1x3x224x224') -> (1, 3, 224, 224); anything else is an error naming the flag."""
    parts = [p.strip() for p in text.split("," if "," in text else "x")]  # 1,3,224,224 or 1x3x224x224
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of integers (e.g. 1,3,224,224)") from None
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"{flag} {text!r} must list positive sizes (e.g. 1,3,224,224)")
    return shape


def parse_sets(items: list[str], flag: str = "--set") -> tuple[tuple[str, Any], ...]:
    """`--set KEY=VALUE` items -> ((key, value), ...): values as Python literals where they parse (2, 0.5,
    (3, 5), True), else as strings."""
    import ast

    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{flag} {item!r} must look like KEY=VALUE (e.g. width=2)")
        try:
            out.append((key.strip(), ast.literal_eval(value.strip())))
        except (ValueError, SyntaxError):
            out.append((key.strip(), value.strip()))
    return tuple(out)
