"""`make bench`: run every benchmark script in benchmarks/ in its own process; fail if any claim fails.

`python benchmarks/run_all.py NAME ...` runs only the named scripts (file stems).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"common", "run_all"}


def main(argv: list[str]) -> int:
    wanted = set(argv)
    scripts = sorted(p for p in HERE.glob("*.py")
                     if p.stem not in NOT_BENCHMARKS and (not wanted or p.stem in wanted))
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(script.stem)
    print(f"\n{len(scripts) - len(failed)} benchmarks passed, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
