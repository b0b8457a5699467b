"""The shipped SmolLM2-135M-Instruct (a transformers LlamaForCausalLM) studied as a user's pretrained decoder:
perplexity (↓) on held-out King James chapters vs decode tokens/s vs weight bytes.

    python examples/user_llm/smollm2_study.py [store] [plan,plan,...]

Perplexity: effml.eval.perplexity over `TOKENS` held-out tokens in windows of `CTX`; calibration: 8 samples of
256 tokens from other chapters (GPTQ / AWQ / block pruning); latency and decode speed on one 64-token prompt.
"""

from __future__ import annotations

import sys

import torch

TOKENS, CTX = 2048, 256
DEFAULT_PLANS = ["weight-only-int8", "weight-only-int4", "weight-only-int8+tied", "weight-only-int4+tied-int8",
                 "gptq-4b", "int8-dynamic"]


def main(store: str = "llm_runs.db", plans: str | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import effml
    from effml.eval import calibration_tokens, heldout_tokens, perplexity
    from effml.llm.weights import ensure_converted

    torch.set_num_threads(1)
    path = ensure_converted()  # the shipped GGUF's weights as an fp32 transformers folder, made once
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    held = heldout_tokens(tok, TOKENS)  # (TOKENS,) ids

    def evaluate(m):
        return {"perplexity": perplexity(m, held, CTX).perplexity}

    res = effml.study(model, evaluate, example_inputs={"input_ids": held[None, :64]},
                      calibration=calibration_tokens(tok, n_samples=8, seq_len=256),
                      plans=(plans.split(",") if plans else DEFAULT_PLANS), devices=("rpi5", "h100-sxm"),
                      store=store, name="smollm2", measure_budget_s=3.0)
    for r in res.rows:
        print(f"{r['name']:20s} ppl {r['metrics']['perplexity']:7.3f}  {r['model_bytes'] / 1e6:6.1f} MB  "
              f"prefill {r['speedup_measured']:.2f}x  decode {r.get('decode_tok_s') or 0:5.1f} tok/s "
              f"({r.get('decode_speedup') or 1:.2f}x)  ttft {1e3 * (r.get('ttft_s') or 0):.0f} ms")
    for cost, names in res.frontier.items():
        print(f"frontier (perplexity vs {cost}): {', '.join(names)}")
    for name, why in res.skipped + res.failed:
        print(f"not run {name}: {why}")


if __name__ == "__main__":
    main(*sys.argv[1:])
