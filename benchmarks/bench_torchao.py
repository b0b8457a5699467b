"""torchao beside effml's weight-only kernels on SmolLM2-135M (issue 14: "prefer torchao where it is faster").

The same model in transformers' `generate` (greedy, NEW tokens after a chat prompt, 1 torch thread) with its
nn.Linear layers quantized three ways: torchao's `quantize_` (Int8WeightOnlyConfig; Int4WeightOnlyConfig with
group 32 in each packing format it has, the first that runs a forward here), effml's WeightOnlyLinear
on gemv_a8 (kernel "a8") and on its exact kernels (kernel "packed"); plus effml's own engine (`effml generate`'s
path) in the same format. Every configuration runs once per round, rounds rotate the order, medians reported.
torchao is a peer installed without touching torch (`pip install --no-deps torchao`); without it the torchao rows
say so. Decode tok/s excludes the prefill: (N - 1) / (t(N) - t(1)).
Run: `flock /tmp/effml_bench.lock python benchmarks/bench_torchao.py [--rounds 3] [--tokens 48]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_decode import PROMPT, hf_decode, hf_in_format  # noqa: E402
from common import print_table, write_results  # noqa: E402


def torchao_model(hf, bits: int):
    """HF model quantized by torchao (lm_head included, as effml's formats quantize the head too), or the error."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except Exception as e:  # noqa: BLE001 - torchao absent or broken against this torch: reported, not hidden
        return f"torchao unavailable: {type(e).__name__}: {e}"
    import copy

    import torch

    cfgs = {"Int8WeightOnlyConfig()": Int8WeightOnlyConfig()} if bits == 8 else {
        f"Int4WeightOnlyConfig(group_size=32, int4_packing_format={f!r})":
            Int4WeightOnlyConfig(group_size=32, int4_packing_format=f) for f in ("tile_packed_to_4d", "plain")}
    errors = []
    for name, cfg in cfgs.items():  # the first that quantizes and runs a forward on this CPU
        m = copy.deepcopy(hf)
        if "tile_packed" in name:
            m = m.to(torch.bfloat16)  # torchao's tinygemm layout takes bf16 weights and activations only
        try:
            quantize_(m, cfg)
            with torch.no_grad():
                m(torch.tensor([[1, 2, 3]]))
            return m
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}")
    return "torchao int%d failed on this CPU: %s" % (bits, "; ".join(errors))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.generate import GenerateConfig, generate
    from effml.llm.registry import load_model
    from effml.llm.weights import load_hf_reference

    lm = load_model("smollm2-135m")
    ids = lm.tokenizer.chat(PROMPT)
    runs, errors = {}, {}
    for bits in (8, 4):
        fmt = f"int{bits}"
        ao = torchao_model(load_hf_reference(), bits)
        if isinstance(ao, str):
            errors[f"HF + torchao {fmt}"] = ao
        else:
            runs[f"HF + torchao {fmt}"] = lambda m=ao: hf_decode(m, ids, a.tokens)[0]
        for kernel in ("a8", "packed"):
            hf = hf_in_format(load_hf_reference(), fmt, kernel)
            runs[f"HF + effml {fmt} ({kernel})"] = lambda m=hf: hf_decode(m, ids, a.tokens)[0]
        m = copy.deepcopy(lm.model)
        to_format(m, FormatConfig(fmt))
        prepare(m)

        def engine(m=m):
            r = generate(m, ids, GenerateConfig(max_new_tokens=a.tokens))
            return (len(r.tokens) - 1) / (r.time_s - r.ttft_s)
        runs[f"effml engine {fmt}"] = engine
    for f in runs.values():
        f()  # warm-up: first-call packing
    tps: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    load = [os.getloadavg()[0]]
    for r in range(a.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            print(f"round {r + 1}/{a.rounds}: {k}", flush=True)
            tps[k].append(runs[k]())
    load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in tps.items()}
    rows = []
    for k in names:
        fmt = k.split("int")[1][0]
        ao = med.get(f"HF + torchao int{fmt}")
        rows.append({"configuration": k, "decode tok/s": med[k], "× torchao (HF)": med[k] / ao if ao else None})
    print_table(f"SmolLM2-135M decode, 1 thread, {a.tokens} tokens, CPU {torch.backends.cpu.get_cpu_capability()}, "
                f"load {load[0]:.1f}-{load[1]:.1f}", rows)
    for k, e in errors.items():
        print(f"{k}: {e}")
    try:
        import torchao

        ver = torchao.__version__
    except Exception:  # noqa: BLE001
        ver = None
    path = write_results("torchao", {"tokens": a.tokens, "rounds": a.rounds, "torchao": ver,
                                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                     "loadavg_start_end": load, "rows": rows, "rounds_tok_s": tps,
                                     "errors": errors})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
