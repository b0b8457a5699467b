"""The default `effml study` (what `make demo` runs), timed, with the issue's claims checked.

Claims (issue 5): the whole default run finishes in < 10 minutes on 2 cores, and the frontier holds a
variant ≥ 4× smaller and ≥ 1.5× faster (measured beside the baseline) at ≤ 1 pt accuracy loss.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, print_table, write_results

MAX_MINUTES, MIN_SMALLER, MIN_FASTER, MAX_DROP_PT = 10.0, 4.0, 1.5, 1.0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        store, out = Path(tmp) / "runs.db", RESULTS / "study_report.html"
        RESULTS.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "effml.cli", "study", "--store", str(store), "--out", str(out),
                               "--json"], capture_output=True, text=True)
        minutes = (time.perf_counter() - t0) / 60
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        d = json.loads(proc.stdout)
    runs = d["runs"]
    base = next(r for r in runs if not r["chain"])["metrics"]
    rows, winners = [], []
    for r in runs:
        m = r["metrics"]
        smaller = base["model_bytes"] / m["model_bytes"]
        faster = m.get("speedup_measured") or 1.0
        drop = 100 * (base["accuracy"] - m["accuracy"])
        ok = smaller >= MIN_SMALLER and faster >= MIN_FASTER and drop <= MAX_DROP_PT
        winners += [r["name"]] if ok else []
        rows.append({"variant": r["name"], "accuracy %": 100 * m["accuracy"], "drop pt": drop,
                     "× smaller": smaller, "× faster (measured beside baseline)": faster,
                     "p50 ms": 1e3 * m["latency_p50_s"],
                     "local pred ms": 1e3 * m["local_pred_s"] if m.get("local_pred_s") else None, "claim": ok})
    print_table(f"effml study (default): {minutes:.1f} min, data {d['data'].get('name')}", rows)
    passed = minutes < MAX_MINUTES and bool(winners)
    print(f"whole run {minutes:.1f} min (< {MAX_MINUTES}); variants ≥{MIN_SMALLER}× smaller, ≥{MIN_FASTER}× "
          f"faster at ≤{MAX_DROP_PT} pt: {winners or 'none'}")
    for line in d["headline"]:
        print("•", line)
    path = write_results("study", {"minutes": minutes, "rows": rows, "winners": winners, "headline": d["headline"],
                                   "data": d["data"], "passed": passed})
    print(f"wrote {path} and {RESULTS / 'study_report.html'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
