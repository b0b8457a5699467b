"""KV cache vs recompute on SmolLM2-135M-Instruct: tokens/s for 256 generated tokens (issue 6).

Claim: a KV cache (contiguous or paged) generates the same 256 greedy tokens as recomputing the whole sequence
every step, several times faster (recompute costs O(n²) for n tokens, the cache O(n)). The three runs decode the
same short raw prompt (5 tokens) and are measured in one process, one after another.
Run: `python benchmarks/bench_kv_cache.py` (about 2-5 minutes on 2 busy cores, most of it the recompute run).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: no stalls on a shared CPU

from common import print_table, write_results

NEW_TOKENS, PROMPT = 256, "Once upon a time, in a land far away,"
MIN_RATIO = 2.0


def main() -> int:
    import torch

    torch.set_num_threads(2)
    from effml.llm.generate import GenerateConfig, generate
    from effml.llm.kvcache import kv_bytes_per_token
    from effml.llm.weights import load_smollm2

    model, tok = load_smollm2()
    ids = tok.encode(PROMPT)
    runs = {}
    for kv in ("contiguous", "paged", "none"):
        print(f"generating {NEW_TOKENS} tokens, kv={kv} ...", flush=True)
        runs[kv] = generate(model, ids, GenerateConfig(max_new_tokens=NEW_TOKENS, kv=kv))
    base = runs["none"].tokens_per_s
    rows = [{"kv": kv, "tokens": len(r.tokens), "time s": r.time_s, "tokens/s": r.tokens_per_s,
             "vs recompute": r.tokens_per_s / base, "same tokens": r.tokens == runs["none"].tokens,
             "last 32 tok s": r.step_times_s[-1] - r.step_times_s[-33]} for kv, r in runs.items()]
    print_table(f"SmolLM2-135M, {len(ids)}-token prompt, {NEW_TOKENS} greedy tokens", rows)
    per_tok = kv_bytes_per_token(model.args)
    print(f"KV cache at {len(ids) + NEW_TOKENS} tokens: {per_tok * (len(ids) + NEW_TOKENS) / 2**20:.1f} MiB "
          f"(46,080 B per token in fp32: 2 x 30 layers x 3 KV heads x 64 x 4 B)")
    ratio = min(runs["contiguous"].tokens_per_s, runs["paged"].tokens_per_s) / base
    same = all(r.tokens == runs["none"].tokens for r in runs.values())
    claims = {"kv_over_recompute_tokens_per_s": {"value": ratio, "target": f">= {MIN_RATIO}", "holds": ratio >= MIN_RATIO},
              "identical_tokens": {"value": same, "target": True, "holds": same}}
    write_results("llm_kv_cache", {"prompt_tokens": len(ids), "new_tokens": NEW_TOKENS,
                                   "runs": {kv: r.to_dict() for kv, r in runs.items()},
                                   "kv_bytes_per_token": per_tok, "claims": claims})
    print(f"KV cache / recompute: {ratio:.2f}x tokens/s (the slower of contiguous and paged)")
    failed = [k for k, c in claims.items() if not c["holds"]]
    if failed:
        print(f"claims not met: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
