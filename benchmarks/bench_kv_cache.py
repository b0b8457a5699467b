"""KV cache vs recompute on SmolLM2-135M-Instruct: tokens/s for 256 generated tokens (issue 6).

Claim: a KV cache (contiguous or paged) generates the same 256 greedy tokens as recomputing the whole sequence
every step, several times faster (recompute costs O(n²) for n tokens, the cache O(n)). The three strategies
decode the same short raw prompt in one process, interleaved: every step runs each strategy once (in rotating
order) and times it, so load from other processes on a shared machine hits all three alike.
Run: `python benchmarks/bench_kv_cache.py` (about 2-5 minutes on 2 busy cores, most of it the recompute run).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: no stalls on a shared CPU

from common import claims_exit_code, print_table, write_results

NEW_TOKENS, PROMPT = 256, "Once upon a time, in a land far away,"
MIN_RATIO = 2.0


def main() -> int:
    import torch

    torch.set_num_threads(2)
    from effml.llm.generate import new_session
    from effml.llm.kvcache import kv_bytes_per_token
    from effml.llm.weights import load_smollm2

    model, tok = load_smollm2()
    ids = tok.encode(PROMPT)
    kinds = ("contiguous", "paged", "none")
    sessions = {kv: new_session(kv, model, len(ids) + NEW_TOKENS) for kv in kinds}
    times = {kv: [] for kv in kinds}  # seconds per step, the prefill first
    tokens = {kv: [] for kv in kinds}
    with torch.no_grad():
        for step in range(NEW_TOKENS):
            order = kinds[step % 3:] + kinds[:step % 3]
            for kv in order:
                feed = ids if step == 0 else tokens[kv][-1:]
                t = time.perf_counter()
                logits = sessions[kv].feed(feed, last=1)[-1]  # (V,)
                times[kv].append(time.perf_counter() - t)
                tokens[kv].append(int(logits.argmax()))
            if step % 32 == 31:
                print(f"{step + 1}/{NEW_TOKENS} tokens", flush=True)
    tps = {kv: NEW_TOKENS / sum(times[kv]) for kv in kinds}
    rows = [{"kv": kv, "tokens": len(tokens[kv]), "time s": sum(times[kv]), "tokens/s": tps[kv],
             "vs recompute": tps[kv] / tps["none"], "same tokens": tokens[kv] == tokens["none"],
             "first 32 s": sum(times[kv][:32]), "last 32 s": sum(times[kv][-32:])} for kv in kinds]
    print_table(f"SmolLM2-135M, {len(ids)}-token prompt, {NEW_TOKENS} greedy tokens (interleaved)", rows)
    per_tok = kv_bytes_per_token(model.args)
    print(f"KV cache at {len(ids) + NEW_TOKENS} tokens: {per_tok * (len(ids) + NEW_TOKENS) / 2**20:.1f} MiB "
          f"(46,080 B per token in fp32: 2 x 30 layers x 3 KV heads x 64 x 4 B)")
    ratio = min(tps["contiguous"], tps["paged"]) / tps["none"]
    same = all(tokens[kv] == tokens["none"] for kv in kinds)
    claims = {"kv_over_recompute_tokens_per_s": {"value": ratio, "target": f">= {MIN_RATIO}", "holds": ratio >= MIN_RATIO},
              "identical_tokens": {"value": same, "target": True, "holds": same}}
    write_results("llm_kv_cache", {"prompt_tokens": len(ids), "new_tokens": NEW_TOKENS,
                                   "runs": {kv: {"tokens_per_s": tps[kv], "time_s": sum(times[kv]),
                                                 "step_times_s": times[kv]} for kv in kinds},
                                   "kv_bytes_per_token": per_tok, "claims": claims})
    print(f"KV cache / recompute: {ratio:.2f}x tokens/s (the slower of contiguous and paged)")
    return claims_exit_code(claims)


if __name__ == "__main__":
    sys.exit(main())
