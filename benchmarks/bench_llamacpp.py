"""effml's decode beside llama.cpp on the same SmolLM2-135M weights, 1 thread (issue 15: "llama.cpp where it can be
built here").

llama.cpp runs the shipped GGUF (Q4_1, the file effml's own weights come from) and two files made from it with
llama.cpp's own `llama_model_quantize` (Q8_0, and F16: a requantization, so every format holds the Q4_1 file's
values); effml runs the same weights in its engine as int4 (g32, int8 head), int8, bf16 and fp32 (the reference
whose greedy tokens every row is compared with). Same chat prompt, the
same prompt token ids (llama.cpp is fed effml's ids, not its own tokenization), greedy, 64 tokens, configurations
interleaved per round, medians of rounds. Decode tokens/s excludes the prompt: (N - 1) / (t(N) - t(1)) from the
time each token arrives (HF's rule in bench_decode). The bound for a llama.cpp file is read bandwidth / (the file's
tensor bytes + K/V), every tensor read once per token (the tied embedding table is the output head); effml's is
effml.llm.roofline's.

Optional peer: needs `llama_cpp` (pip `llama-cpp-python`, which builds llama.cpp from source, ~12 minutes on 2
cores: `CMAKE_ARGS=-DGGML_NATIVE=ON pip install --no-deps --no-build-isolation llama-cpp-python==0.3.36`, plus
`scikit-build-core` and `diskcache`). Without it the script says so and exits 0 (nothing to compare).
Run: `flock /tmp/effml_bench.lock python benchmarks/bench_llamacpp.py [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from common import print_table, write_results

PROMPT = "Explain in a few sentences why the sky is blue."
TOKENS = 64
QUANT_TYPES = {"Q8_0": 7, "F16": 1}  # llama_ftype values (llama.h): LLAMA_FTYPE_MOSTLY_Q8_0, LLAMA_FTYPE_MOSTLY_F16
PAIRS = (("int4", "Q4_1"), ("int8", "Q8_0"), ("bf16", "F16"))  # effml format beside the llama.cpp file of its size
REFERENCE = "fp32"  # effml fp32 too: the greedy tokens every row is compared with


def requantized(src: Path, name: str, out_dir: Path) -> Path:
    """`src` requantized by llama.cpp to `name` (cached in out_dir)."""
    import llama_cpp

    out = out_dir / f"{src.stem.rsplit('.', 1)[0]}.{name}.gguf"
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = QUANT_TYPES[name]
        params.allow_requantize = True
        params.nthread = 2
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
        if rc != 0 or not out.exists():
            raise RuntimeError(f"llama_model_quantize to {name} failed (return code {rc})")
    return out


def tensor_bytes(path: Path) -> int:
    """The bytes of a GGUF file's tensors (what a decode step reads, each tensor once)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def llama_run(llm, ids: list[int]) -> tuple[list[int], list[float]]:
    """Greedy continuation of `ids` from an empty context -> (tokens, arrival time of each)."""
    llm.reset()
    out, times, t0 = [], [], time.perf_counter()
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(int(tok))
        times.append(time.perf_counter() - t0)
        if len(out) == TOKENS:
            break
    return out, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama_cpp is not installed (pip llama-cpp-python builds llama.cpp from source, ~12 min): nothing to "
              "compare; see this script's docstring")
        return 0
    import torch

    torch.set_num_threads(1)
    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.generate import GenerateConfig, generate
    from effml.llm.registry import load_model
    from effml.llm.roofline import decode_roofline, read_bandwidth
    from effml.llm.weights import cache_root, gguf_path

    src = gguf_path()
    files = {"Q4_1": src, **{q: requantized(src, q, cache_root() / "llamacpp") for q in QUANT_TYPES}}
    lm = load_model("smollm2-135m")
    ids = lm.tokenizer.chat(PROMPT)
    effml = {}
    for fmt in [f for f, _ in PAIRS] + [REFERENCE]:
        m = copy.deepcopy(lm.model)
        to_format(m, FormatConfig(fmt))
        prepare(m)
        effml[fmt] = m
    llamas = {q: llama_cpp.Llama(str(p), n_threads=1, n_threads_batch=1, n_ctx=512, n_batch=512, verbose=False)
              for q, p in files.items()}
    bw = [read_bandwidth()]
    for m in effml.values():
        generate(m, ids, GenerateConfig(max_new_tokens=4))  # warm-up
    for llm in llamas.values():
        llama_run(llm, ids)
    configs = [("effml", f) for f in effml] + [("llama.cpp", q) for _, q in PAIRS]
    rate = {c: [] for c in configs}
    ttft = {c: [] for c in configs}
    toks = {}
    for r in range(a.rounds):
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            print(f"round {r + 1}/{a.rounds}: {c[0]} {c[1]}", flush=True)
            if c[0] == "effml":
                res = generate(effml[c[1]], ids, GenerateConfig(max_new_tokens=TOKENS))
                out, times = res.tokens, res.step_times_s
            else:
                out, times = llama_run(llamas[c[1]], ids)
            rate[c].append((len(out) - 1) / (times[-1] - times[0]))
            ttft[c].append(times[0])
            toks[c] = out
    bw.append(read_bandwidth(fresh=True))  # measured again at the end
    bandwidth = statistics.mean(bw)
    ctx = len(ids) + TOKENS / 2
    kv = 2 * lm.model.args.n_layers * lm.model.args.n_kv_heads * lm.model.args.head_dim * ctx  # elements
    rows, out = [], {}
    for c in configs:
        tps = statistics.median(rate[c])
        if c[0] == "effml":
            rl = decode_roofline(effml[c[1]], tps, ctx, bandwidth)
            bound, nbytes = rl.bound_tokens_per_s, rl.weight_bytes
        else:
            kv_bytes = kv * 2  # llama.cpp's default K/V cache type is f16
            nbytes = tensor_bytes(files[c[1]])
            bound = bandwidth / (nbytes + kv_bytes)
        same = next((i for i, (x, y) in enumerate(zip(toks[c], toks[("effml", REFERENCE)])) if x != y), len(toks[c]))
        row = {"engine": c[0], "format": c[1], "decode tok/s": tps, "TTFT s": statistics.median(ttft[c]),
               "weight MB": nbytes / 1e6, "bound tok/s": bound, "of bound": tps / bound,
               "greedy tokens = effml fp32": f"{same}/{len(toks[c])}"}
        rows.append(row)
        out[f"{c[0]} {c[1]}"] = {**row, "rounds": rate[c]}
    ratios = {f"effml {f} / llama.cpp {q}": statistics.median(rate[("effml", f)]) /
              statistics.median(rate[("llama.cpp", q)]) for f, q in PAIRS}
    print_table(f"SmolLM2-135M decode, effml vs llama.cpp, 1 thread, CPU {torch.backends.cpu.get_cpu_capability()}, "
                f"{bandwidth / 1e9:.1f} GB/s read", rows)
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    path = write_results("llamacpp", {"prompt": PROMPT, "tokens": TOKENS, "rounds": a.rounds,
                                      "llama_cpp": getattr(llama_cpp, "__version__", None),
                                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                      "bandwidth_Bps_start_end": bw, "load_average_end": os.getloadavg(),
                                      "results": out, "ratios": ratios})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
