"""What the subcommands share: the argparse `type=` validators, the model/--hw/--set flags, one JSON object for
--json (never NaN/Infinity), the rich console and the progress bar the library's `progress=` hook drives.

Validators raise argparse.ArgumentTypeError, so the error names the flag: "argument --lr: must be > 0, got -1"
(one line on stderr, exit 2: see `effml.cli.Parser`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from effml.errors import ConfigError
from effml.progress import Progress



# ---- argparse type= validators --------------------------------------------------------------------------------
def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _bounded(name: str, kind: type, ok: Callable[[Any], bool], rule: str, doc: str) -> Callable[[str], Any]:
    """A `type=` validator: a `kind` number for which `ok` holds, else 'must be RULE, got TEXT'."""
    def parse(text: str):
        value = _number(text, kind)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = doc
    return parse


positive_int = _bounded("positive_int", int, lambda v: v > 0, "an integer > 0",
                        "An integer > 0 (batch sizes, steps, threads, widths).")
nonneg_int = _bounded("nonneg_int", int, lambda v: v >= 0, "an integer >= 0",
                      "An integer >= 0 (depths, counts where 0 means none).")
positive_float = _bounded("positive_float", float, lambda v: v > 0, "a finite number > 0",
                          "A finite number > 0 (learning rates, rates, budgets, MFU).")
nonneg_float = _bounded("nonneg_float", float, lambda v: v >= 0, "a finite number >= 0",
                        "A finite number >= 0 (prices, temperatures, epochs).")
fraction = _bounded("fraction", float, lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]",
                    "A number in [0, 1] (sparsities, MFU-like shares).")


def unit_fraction(text: str) -> float:
    """A number in (0, 1] (a utilisation: 0 would mean an infinite time)."""
    value = _number(text, float)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}")
    return value


DURATION_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """A time budget in seconds, the one unit of every time budget: '90' or '90s', '8m', '1.5h' -> 90.0, 480.0,
    5400.0; must be finite and > 0."""
    body = text.strip().lower()
    scale = 1.0
    for unit in sorted(DURATION_UNITS, key=len, reverse=True):
        if body.endswith(unit) and body[:-len(unit)].strip():
            body, scale = body[:-len(unit)].strip(), DURATION_UNITS[unit]
            break
    try:
        value = float(body) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (seconds, or with a unit: 90s, 8m, 1.5h)") \
            from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite duration > 0, got {text!r}")
    return value


# ---- shared flags -----------------------------------------------------------------------------------------
def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


# the registry names shown in --help (written out: importing the registries would import torch for --help;
# tests/cli/test_model_spec.py checks them against the registries)
HELP_NAMES = {"zoo": ("lenet5", "mlp", "resnet", "tiny_gpt", "vgg"), "llm": ("smollm2-135m", "tiny", "tiny-draft")}


def add_model_flags(parser, *, source: str = "zoo", default: str | None = None, group=None) -> None:
    """`--model SPEC` (a registry NAME or package.module:callable) and `--set KEY=VALUE` constructor arguments.
    `group`: add --model to a mutually exclusive group (beside --config)."""
    names = ", ".join(HELP_NAMES[source])
    help_ = (f"model spec: a {source} name ({names}) or package.module:callable returning it"
             + (f" (default {default})" if default else ""))
    (group or parser).add_argument("--model", default=default, help=help_)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set",
                        help="--model constructor argument, repeatable (e.g. --set width=2)")


def add_hw_flag(parser, *, default: list[str] | None = None, help: str = "") -> None:
    """`--hw DEVICE [DEVICE ...]`: one or more devices, space- or comma-separated, checked by `parse_hw`."""
    parser.add_argument("--hw", nargs="+", default=default, metavar="DEVICE",
                        help=help or "device(s), space- or comma-separated (`effml hw list`)")


def parse_hw(values: list[str] | str | None, flag: str = "--hw", *, dtypes: bool = False) -> list[str]:
    """['h100,a100', 't4'] -> ['h100', 'a100', 't4']; every name must be a catalog device (or an alias), `local`
    or a device JSON file, else ConfigError naming the flag and the known devices. `dtypes`: NAME:DTYPE allowed."""
    if values is None:
        return []
    from effml.hardware import get_device
    from effml.hardware.catalog import LOCAL, DeviceError

    items = [values] if isinstance(values, str) else list(values)
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{flag} needs at least one device name (`effml hw list`)")
    for entry in names:
        name = entry.partition(":")[0] if dtypes else entry
        if name.strip().lower() == LOCAL:
            continue  # known; whether it is calibrated yet is the command's to say
        try:
            get_device(name)
        except DeviceError as e:
            raise ConfigError(f"{flag}: {e}") from None
    return names


def one_hw(values: list[str] | None, flag: str = "--hw", why: str = "") -> str | None:
    """The single device of a command that works on one (e.g. a search under one device's budget)."""
    names = parse_hw(values, flag)
    if len(names) > 1:
        raise ConfigError(f"{flag} takes one device here{why}, got {len(names)}: {', '.join(names)}")
    return names[0] if names else None


def refuse_unless(args, flags: dict[str, Any], condition: bool, why: str) -> None:
    """Options that do not apply are refused, not ignored: each of `flags` (flag -> parsed value, None/False/
    default meaning not given) set while `condition` is false raises ConfigError naming it and `why`."""
    if condition:
        return
    given = [flag for flag, value in flags.items() if value not in (None, False, [], ())]
    if given:
        raise ConfigError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


# ---- JSON -------------------------------------------------------------------------------------------------
def print_json(obj: Any) -> None:
    """One JSON object on stdout. Non-finite numbers (NaN, ±inf) are not JSON: they become null and their
    paths are listed under "non_finite" (a note, so a reader knows null means "not a number" there)."""
    bad: list[str] = []
    plain = to_plain(obj, bad)
    if bad and isinstance(plain, dict):
        plain["non_finite"] = bad
    sys.stdout.write(json.dumps(plain, indent=2, sort_keys=False, allow_nan=False) + "\n")


def to_plain(o: Any, bad: list[str] | None = None, path: str = "$") -> Any:
    """JSON-ready data: to_dict() objects, tuples and sets as lists, numpy scalars as numbers, non-finite
    floats as None (their paths appended to `bad`)."""
    bad = [] if bad is None else bad
    if isinstance(o, bool) or o is None or isinstance(o, (str, int)):
        return o
    if isinstance(o, float):
        if math.isfinite(o):
            return o
        bad.append(path)
        return None
    if isinstance(o, dict):
        return {str(k): to_plain(v, bad, f"{path}.{k}") for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [to_plain(v, bad, f"{path}[{i}]") for i, v in enumerate(o)]
    if hasattr(o, "to_dict"):
        return to_plain(o.to_dict(), bad, path)
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return to_plain(o.item(), bad, path)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON (at {path})")


@contextmanager
def progress_hook(description: str, *, quiet: bool = False) -> Iterator[Progress]:
    """A transient rich bar on stderr (stdout stays one JSON object under --json), driven by the library's
    `progress=(what, fraction)` hook: `with progress_hook("training") as progress: fit(..., progress=progress)`."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

    with Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
             TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=quiet) as bar:
        task = bar.add_task(description, total=1.0)

        def progress(what: str, done: float) -> None:
            bar.update(task, completed=min(max(float(done), 0.0), 1.0), description=what or description)

        yield progress


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
