"""Shared by the benchmark scripts: print a table, write JSON to benchmarks/results/, record the machine."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    from effml.hardware.calibrate import cpu_name

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_name(),  # hosts of one cloud differ by CPU model, not only by ISA
        "last_level_cache": _last_level_cache(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _last_level_cache() -> str | None:
    """The largest cache level's size as sysfs reports it (e.g. '32768K'); None where sysfs has no cache entries."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    best = None
    for c in caches:
        try:
            level = int((c / "level").read_text())
            size = (c / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if best is None or level > best[0]:
            best = (level, size)
    return None if best is None else best[1]


def print_table(title: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    if rows:
        for key in rows[0]:
            table.add_column(str(key), justify="right")
        for row in rows:
            table.add_row(*(_fmt(v) for v in row.values()))
    Console().print(table)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_results(name: str, payload: dict) -> Path:
    """Write benchmarks/results/<name>.json with the machine it ran on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2) + "\n")
    return path


def claims_exit_code(claims: dict) -> int:
    """Exit status of a benchmark from its claims ({name: {"value", "target", "holds"}}): 1 and a line naming
    the claims not met, else 0."""
    failed = [k for k, c in claims.items() if not c["holds"]]
    if failed:
        print(f"claims not met: {failed}")
    return 1 if failed else 0
