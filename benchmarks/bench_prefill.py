"""Prompt prefill of SmolLM2-135M int4 / int8 through effml's engine: gemv_a8's AMX kernel vs its vector kernel.

Where the CPU has AMX-INT8 (Intel Xeon since Sapphire Rapids), gemv_a8 runs calls of 16 rows and more on the tile
unit (native/amx.cpp: `tdpbssd` for the integer sums, the vector kernel's float steps in its order). Here a prompt
of 39 (a chat turn), 128 and 400 tokens fills an empty cache (`model(tokens, cache, last=1)`: every layer, the
head on the last position) with the AMX threshold at 16 and at 0 (never: AVX-512 VNNI or AVX2), alternating
`--rounds` times in one process, minimum per case. 1 torch thread.

Claims (where there is an AMX kernel): the two give the same logits bit for bit; and the AMX prefill of 128+ tokens
is not slower than the vector one. Elsewhere the vector kernel's times are recorded and the claims are n/a.
Run: `flock /tmp/effml_bench.lock python benchmarks/bench_prefill.py`.
"""

from __future__ import annotations

import argparse
import os
import time

from common import claims_exit_code, print_table, write_results

PROMPTS, FORMATS = (39, 128, 400), ("int4", "int8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default="llm_prefill", help="results file stem")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("EFFML_BENCH_THREADS", "1")))
    from effml import native
    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.kvcache import ContiguousCache
    from effml.llm.model import compute_dtype
    from effml.llm.weights import load_smollm2

    ext = native.load()
    amx = ext.a8_amx() if ext is not None else 0  # the threshold in force: 0 = no AMX kernel here
    modes = {"amx": amx, "vector": 0} if amx else {"vector": 0}
    g = torch.Generator().manual_seed(0)
    prompts = {T: torch.randint(100, 40000, (1, T), generator=g) for T in PROMPTS}
    rows, same, not_slower = [], True, True
    for fmt in FORMATS:
        model, _ = load_smollm2()
        to_format(model, FormatConfig(fmt))
        prepare(model)
        best: dict = {}
        logits: dict = {}
        with torch.no_grad():
            for _ in range(args.rounds):
                for T, toks in prompts.items():
                    for mode, threshold in modes.items():
                        if ext is not None:
                            ext.a8_amx(threshold)
                        cache = ContiguousCache(model.args, 1, T + 1, compute_dtype(model))
                        t0 = time.perf_counter()
                        out = model(toks, cache=cache, last=1)
                        dt = time.perf_counter() - t0
                        best[T, mode] = min(best.get((T, mode), float("inf")), dt)
                        logits[T, mode] = out
        if ext is not None:
            ext.a8_amx(amx)
        for T in PROMPTS:
            row = {"format": fmt, "prompt tokens": T, "vector ms": best[T, "vector"] * 1e3}
            if amx:
                eq = torch.equal(logits[T, "amx"], logits[T, "vector"])
                speed = best[T, "vector"] / best[T, "amx"]
                row |= {"AMX ms": best[T, "amx"] * 1e3, "AMX speed-up": speed, "same logits": eq}
                same &= eq
                if T >= 128:
                    not_slower &= speed >= 1.0
            rows.append(row)
    print_table(f"prompt prefill, SmolLM2-135M, 1 thread (AMX kernel from {amx} rows)" if amx else
                "prompt prefill, SmolLM2-135M, 1 thread (no AMX kernel here: the vector kernel alone)", rows)
    claims = {}
    if amx:
        claims = {"amx_same_logits_as_vector": {"value": same, "target": True, "holds": same},
                  "amx_not_slower_from_128_tokens": {"value": not_slower, "target": True, "holds": not_slower}}
    path = write_results(args.out, {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                    "threads": torch.get_num_threads(), "amx_rows": amx, "rounds": args.rounds,
                                    "rows": rows, "claims": claims,
                                    "load_average_end": list(os.getloadavg())})
    print(f"wrote {path}")
    return claims_exit_code(claims)


if __name__ == "__main__":
    raise SystemExit(main())
