"""`effml` command line: thin. Each subcommand lives in its own module with `add_parser` and `run`.

Command modules import only argparse at module level; the heavy work (torch, transformers) is imported
inside `run`, so `effml --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from effml.errors import EffmlError

# Before torch loads its OpenMP runtime: idle worker threads sleep instead of spinning. With spinning (the
# default) a parallel op on a CPU shared with any other process waits for descheduled threads: measured on
# this 2-core box at load 2.4, `effml train --model mlp` took 194 ms per step, 7.9 ms with PASSIVE. An
# explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ... but not at once: a decode step makes ~120 short parallel calls back to back, and a worker asleep after each
# costs ~50 us to wake (SmolLM2 fp32, 2 threads: 40 tok/s asleep, 57 with ~30 us of spinning first; libgomp spins
# ~100 per microsecond). libgomp's own default is ~3 ms.
os.environ.setdefault("GOMP_SPINCOUNT", "3000")

# subcommand -> module defining add_parser(subparsers) and run(args) -> int
COMMANDS: dict[str, str] = {
    "profile": "effml.cli.profile_cmd",
    "hw": "effml.cli.hw_cmd",
    "predict": "effml.cli.predict_cmd",
    "calibrate": "effml.cli.calibrate_cmd",
    "bench": "effml.cli.bench_cmd",
    "scale": "effml.cli.scale_cmd",
    "prune": "effml.cli.prune_cmd",
    "quantize": "effml.cli.quantize_cmd",
    "study": "effml.cli.study_cmd",
    "report": "effml.cli.report_cmd",
    "kv": "effml.cli.kv_cmd",
    "generate": "effml.cli.generate_cmd",
    "serve-bench": "effml.cli.serve_bench_cmd",
    "train-mem": "effml.cli.train_mem_cmd",
    "train": "effml.cli.train_cmd",
    "nas": "effml.cli.nas_cmd",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (the usage is one `--help` away), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed package's version (its metadata), e.g. 0.1.0."""
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        return _version("effml")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (effml is not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="effml",
        description="What does this model cost there, is that prediction true, how do I make it cheaper.",
    )
    parser.add_argument("--version", action="version", version=f"effml {version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad command line (2, one stderr line), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.run(args) or 0)
    except EffmlError as exc:
        if args.debug:
            raise
        print(f"effml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"effml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
