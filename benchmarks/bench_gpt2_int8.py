"""GPT-2 (transformers' GPT2LMHeadModel, 124M, built from its config) quantized by effml: every Conv1D handled or
listed, and the speed of a 32-token forward beside fp32 (issue 14).

Variants, timed in interleaved rounds in this one process (effml.measure.ab.interleave), 1 torch thread, batch 1,
32 tokens (logits of every position, as a prefill or a scoring pass computes them):
  fp32              the model as built
  int8 dynamic      quantize(model, DynamicInt8Config()): per-channel int8 weights, activations quantized per call
                    (torch's dynamic int8 Linear; GPT-2's Conv1D layers are converted to the nn.Linear they are)
  int8 dynamic, head too   DynamicInt8Config(layers=<every layer>): the tied LM head named, so it is quantized
                    as well (an int8 copy; the input embedding keeps the fp32 table)
  int8 weight-only  quantize(model, WeightOnlyConfig(bits=8)): int8 codes, float activations (32 rows: torch's
                    _weight_int8pack_mm; <= 16 rows would take effml's GEMV); ", tied pair int8": tied="int8", the
                    head and the embedding as one int8 table
Each variant's logits are compared with fp32's (cosine over the flattened logits; top-1 agreement per position).
Random weights: the speed of a GPT-2-shaped graph does not depend on the weight values; the agreement figures are
those of random weights (std 0.02), reported, not claimed. Claim: int8 dynamic (the head too) >= 2x fp32 at 32 tokens, with
every weight layer either quantized or listed with a reason (the tied LM head: kept, by choice, and said).

    flock /tmp/effml_bench.lock python benchmarks/bench_gpt2_int8.py     # EFFML_BENCH_THREADS (default 1)
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import warnings

import torch

from common import claims_exit_code, print_table, write_results

warnings.filterwarnings("ignore")
THREADS = int(os.environ.get("EFFML_BENCH_THREADS", "1"))
TOKENS, ROUNDS = 32, 30
TARGET = 2.0


def main() -> int:
    from transformers import GPT2Config, GPT2LMHeadModel

    from effml.compress import DynamicInt8Config, WeightOnlyConfig, quantize
    from effml.compress.hf_layers import weight_layers
    from effml.measure.ab import interleave

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    load = [os.getloadavg()[0]]
    fp32 = GPT2LMHeadModel(GPT2Config()).eval()
    x = torch.randint(0, 50257, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    variants, results = {"fp32": fp32}, {}
    every_layer = tuple(weight_layers(fp32))  # naming the tied head compresses it too (an int8 copy, untied)
    for name, cfg in (("int8 dynamic", DynamicInt8Config()),
                      ("int8 dynamic, head too", DynamicInt8Config(layers=every_layer)),
                      ("int8 weight-only", WeightOnlyConfig(bits=8)),
                      ("int8 weight-only, tied pair int8", WeightOnlyConfig(bits=8, tied="int8"))):
        m = copy.deepcopy(fp32)
        res = quantize(m, cfg)
        variants[name] = res.model
        results[name] = res
    with torch.inference_mode():
        ref = fp32(x).logits
        outs = {k: m(x).logits for k, m in variants.items()}
    times = interleave({k: (lambda m=m: m(x)) for k, m in variants.items()}, rounds=ROUNDS, budget_s=240.0)
    load.append(os.getloadavg()[0])
    base = statistics.median(times["fp32"])
    rows, out = [], {}
    for k in variants:
        p50 = statistics.median(times[k])
        cos = float(torch.nn.functional.cosine_similarity(outs[k].flatten(), ref.flatten(), dim=0))
        top1 = float((outs[k].argmax(-1) == ref.argmax(-1)).float().mean())
        res = results.get(k)
        done = len(res.layers) if res else None
        skipped = [f"{n}: {why}" for n, why in res.skipped] if res else []
        row = {"variant": k, "p50 ms": 1e3 * p50, "× fp32": base / p50, "cosine vs fp32": cos, "top-1 = fp32": top1,
               "layers quantized": done, "skipped": "; ".join(skipped) or "-"}
        rows.append(row)
        out[k] = {**row, "rounds_s": times[k], "skipped_layers": skipped}
    print_table(f"GPT-2 124M, {TOKENS} tokens, {THREADS} thread(s), CPU {torch.backends.cpu.get_cpu_capability()}, "
                f"load {load[0]:.1f}-{load[1]:.1f}", rows)
    n = len(weight_layers(fp32))  # 12 blocks x (c_attn, attn c_proj, c_fc, mlp c_proj) + lm_head = 49
    every = all(out[k]["layers quantized"] + len(out[k]["skipped_layers"]) == n for k in results)
    v = out["int8 dynamic, head too"]["× fp32"]
    claims = {"int8_dynamic_vs_fp32_32_tokens": {"value": v, "target": TARGET, "holds": v >= TARGET},
              "every_layer_quantized_or_listed": {"value": float(every), "target": 1.0, "holds": every}}
    path = write_results("gpt2_int8", {"tokens": TOKENS, "threads": THREADS, "loadavg_start_end": load,
                                       "cpu_capability": torch.backends.cpu.get_cpu_capability(), "variants": out,
                                       "claims": claims})
    print(f"wrote {path}")
    for k, c in claims.items():
        print(f"{k}: {c['value']:.2f} (target {c['target']}) {'holds' if c['holds'] else 'NOT MET'}")
    return claims_exit_code(claims)


if __name__ == "__main__":
    sys.exit(main())
