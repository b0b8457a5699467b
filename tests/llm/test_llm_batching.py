"""Serving engines: same tokens as plain generation, scheduling semantics, Poisson trace, KV accounting."""

import dataclasses

import pytest
import torch

from effml.errors import ConfigError
from effml.llm.batching import serve, serve_side_by_side
from effml.llm.serving import EngineConfig, Request, TraceConfig, poisson_trace
from effml.llm.generate import GenerateConfig, generate


@pytest.fixture(scope="module")
def trace():
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (int(n),), generator=g).tolist() for n in torch.randint(2, 30, (8,), generator=g)]
    return poisson_trace(prompts, TraceConfig(n_requests=16, rate=100.0, mean_output=12, max_output=40))


@pytest.fixture(scope="module")
def results(model, trace):
    cfg = EngineConfig(max_batch=4, block_size=4)
    return {b: serve(model, trace, b, cfg) for b in ("static", "continuous")}


def test_both_engines_produce_exactly_the_plain_greedy_tokens(model, trace, results):
    for r in trace:
        ref = generate(model, list(r.prompt), GenerateConfig(max_new_tokens=r.max_new_tokens)).tokens
        for res in results.values():
            got = next(x for x in res.requests if x.rid == r.rid)
            assert got.tokens == ref and got.prompt_len == len(r.prompt)


def test_side_by_side_serving_gives_each_engine_its_own_run(model, trace, results):
    # interleaving the two engines' model calls changes only timing (each engine keeps its own virtual clock, so
    # which arrivals a batch picks up may differ): every request gets the same greedy tokens
    seen = []
    both = serve_side_by_side(model, trace, ("static", "continuous"), EngineConfig(max_batch=4, block_size=4),
                              progress=lambda name, d, n: seen.append(name))
    for b in ("static", "continuous"):
        assert [r.tokens for r in both[b].requests] == [r.tokens for r in results[b].requests]
        assert both[b].batching == b and both[b].generated_tokens == results[b].generated_tokens
    assert set(seen) == {"static", "continuous"}
    for b in ("static", "continuous"):  # the prefill-only passes: part of the engine's time, not all of it
        assert 0 < both[b].prefill_s < both[b].makespan_s
    with pytest.raises(ConfigError, match="batching 'orca'"):
        serve_side_by_side(model, trace, ("orca",))


def test_both_engines_generate_the_same_total(results, trace):
    want = sum(r.max_new_tokens for r in trace)
    assert results["static"].generated_tokens == results["continuous"].generated_tokens == want


def test_static_answers_a_whole_batch_at_once(results):
    # static: a batch of up to 4 ends together, so finish times come in groups of at most 4
    finishes = {}
    for r in results["static"].requests:
        finishes.setdefault(r.finish_s, []).append(r.rid)
    assert all(len(v) <= 4 for v in finishes.values()) and len(finishes) >= 16 / 4
    for r in results["static"].requests + results["continuous"].requests:
        assert r.arrival_s <= r.first_token_s <= r.finish_s


def test_continuous_runs_fewer_decode_steps(model, trace):
    # static decodes each batch for its longest output: steps = Σ_batches (max len − 1) ≥ the continuous
    # engine's, whose batch shrinks and refills every iteration; both are at least max_len − 1. On the trace with
    # every request arriving at t = 0: with Poisson arrivals the batches depend on the measured wall time (how
    # many requests have arrived when a batch starts), so the step counts would depend on the machine's load
    burst = [dataclasses.replace(r, arrival_s=0.0) for r in trace]
    res = serve_side_by_side(model, burst, ("static", "continuous"), EngineConfig(max_batch=4, block_size=4))
    lens = [r.max_new_tokens for r in burst]
    assert res["static"].steps == sum(max(lens[i:i + 4]) - 1 for i in range(0, len(lens), 4))
    assert res["static"].prefill_passes == 16 / 4  # one per batch of 4
    assert max(lens) - 1 <= res["continuous"].steps < res["static"].steps


def test_continuous_prefills_the_requests_it_admits_together_in_one_pass(model, trace, monkeypatch):
    # every request at t = 0, 4 slots: the first iteration admits 4 requests and prefills their prompts in one pass
    # (the flat row holds all 4 prompts; the head scores each prompt's last position); later ones come as slots free
    import effml.llm.batching as batching

    passes, real = [], batching._logits_at
    monkeypatch.setattr(batching, "_logits_at", lambda m, flat, c, idx: passes.append((flat.shape[1], len(idx)))
                        or real(m, flat, c, idx))
    burst = [dataclasses.replace(r, arrival_s=0.0) for r in trace]
    res = serve(model, burst, "continuous", EngineConfig(max_batch=4, block_size=4))
    assert passes[0] == (sum(len(r.prompt) for r in burst[:4]), 4)
    assert sum(n for _, n in passes) == len(burst) and len(passes) < len(burst) == 16
    assert res.prefill_passes == len(passes) and res.to_dict()["prefill_passes"] == len(passes)
    for r in burst:  # and each gets plain generate()'s greedy tokens
        ref = generate(model, list(r.prompt), GenerateConfig(max_new_tokens=r.max_new_tokens)).tokens
        assert next(x for x in res.requests if x.rid == r.rid).tokens == ref
    # a token budget per pass (vLLM's max_num_batched_tokens): the first pass takes prompts while they fit (at least
    # one, however long), and the rest of the 4 free slots fill on the next iterations
    budget = len(burst[0].prompt) + len(burst[1].prompt)
    passes.clear()
    tight = serve(model, burst, "continuous", EngineConfig(max_batch=4, block_size=4, max_prefill_tokens=budget))
    assert passes[0] == (budget, 2)  # the first two prompts fill it exactly; a third (>= 2 tokens) waits
    assert all(n <= budget or k == 1 for n, k in passes) and sum(k for _, k in passes) == len(burst)
    assert [r.tokens for r in tight.requests] == [r.tokens for r in res.requests]
    passes.clear()
    serve(model, burst[:2], "continuous", EngineConfig(max_batch=4, max_prefill_tokens=1))  # longer than the budget
    assert passes == [(len(burst[0].prompt), 1), (len(burst[1].prompt), 1)]
    with pytest.raises(ConfigError, match="max_prefill_tokens must be positive"):
        EngineConfig(max_prefill_tokens=0)


def test_kv_accounting_paged_waste_is_below_one_block_per_sequence(results, trace):
    kv = results["continuous"].kv
    paged, resv = kv["paged"], kv["max_len_reservation"]
    # a sequence wastes at most block_size − 1 = 3 slots of its last block: waste <= 3·n_live / reserved
    assert paged["reserved_tokens_avg"] - paged["used_tokens_avg"] <= 3 * 4
    assert paged["waste"] < resv["waste"]
    assert resv["used_tokens_avg"] == paged["used_tokens_avg"]  # same live tokens, two reservations
    d = results["continuous"].to_dict()
    assert d["generated_tokens"] == sum(r.max_new_tokens for r in trace) and len(d["per_request"]) == 16


def test_a_small_pool_delays_admission_but_serves_everyone(model, trace):
    # a request's cache ends at prompt + output − 1 tokens; the longest needs ceil(that / 4) <= 20 blocks, so a
    # 20-block pool serves it, but rarely 4 requests at once: admission waits for blocks to come back
    longest = max(-(-(len(r.prompt) + r.max_new_tokens - 1) // 4) for r in trace)
    assert longest <= 20
    res = serve(model, trace, "continuous", EngineConfig(max_batch=4, block_size=4, num_blocks=20))
    assert sorted(r.rid for r in res.requests) == list(range(16))
    # tiny: 2 (K, V) x 2 layers x 2 KV heads x 16 head_dim x 4 B = 512 B per token; never more than 20 x 4 slots
    assert res.kv["paged"]["peak_reserved_bytes"] <= 20 * 4 * 512
    with pytest.raises(ConfigError, match=f"needs {longest} blocks"):
        serve(model, [max(trace, key=lambda r: len(r.prompt) + r.max_new_tokens)], "continuous",
              EngineConfig(block_size=4, num_blocks=10))


def test_stop_token_ends_a_request_early(model, trace):
    r0 = trace[0]
    ref = generate(model, list(r0.prompt), GenerateConfig(max_new_tokens=r0.max_new_tokens)).tokens
    stop = ref[1]
    for b in ("static", "continuous"):
        res = serve(model, [r0], b, EngineConfig(max_batch=2, stop_token=stop))
        assert res.requests[0].tokens == ref[:ref.index(stop) + 1]


def test_bad_input(model):
    with pytest.raises(ConfigError, match="batching 'dynamic'"):
        serve(model, [Request(0, 0.0, (1,), 4)], "dynamic")
    with pytest.raises(ConfigError, match="exceeds the model's context of 256"):
        serve(model, [Request(0, 0.0, (1,) * 250, 10)], "continuous")


@pytest.mark.parametrize("chunk", [5, 64])
def test_chunked_prefill_gives_the_plain_greedy_tokens_in_fewer_model_calls(model, trace, results, chunk,
                                                                            monkeypatch):
    """Prompt chunks ride along the decode rows in one forward: same tokens as generate(), and the prefill
    forwards the continuous engine makes separately (one per request) disappear into the decode iterations."""
    res = serve(model, trace, "chunked", EngineConfig(max_batch=4, block_size=4, prefill_chunk=chunk))
    for r in trace:
        ref = generate(model, list(r.prompt), GenerateConfig(max_new_tokens=r.max_new_tokens)).tokens
        got = next(x for x in res.requests if x.rid == r.rid)
        assert got.tokens == ref, (r.rid, chunk)
        assert got.first_token_s >= r.arrival_s and got.finish_s >= got.first_token_s
    assert len(res.requests) == len(trace) and res.prefill_s is res.prefill_passes is None  # prefill rides in the steps
    if chunk == 64:  # every prompt (< 30 tokens) fits one chunk: a prompt rides along a decode iteration, so
        # fewer model calls than continuous makes (its decode steps + its separate prefill passes). Compared on the
        # trace with every request arriving at t = 0: with Poisson arrivals the clock (advanced by measured wall
        # time) decides how many requests each iteration sees, so the step counts would depend on the load.
        import effml.llm.batching as batching

        calls, real = [], batching._logits_at
        burst = [dataclasses.replace(r, arrival_s=0.0) for r in trace]
        cfg = EngineConfig(max_batch=4, block_size=4, prefill_chunk=chunk)
        chunked = serve(model, burst, "chunked", cfg).steps
        monkeypatch.setattr(batching, "_logits_at", lambda *a: calls.append(1) or real(*a))
        assert chunked < serve(model, burst, "continuous", cfg).steps + len(calls)
    with pytest.raises(ConfigError, match="prefill_chunk and max_prefill_tokens must be positive"):
        EngineConfig(prefill_chunk=0)


def test_prefix_caching_serves_shared_prompt_blocks_from_the_pool(model):
    # a chat trace: every prompt starts with the same 13-token "system prompt", then its own question
    g = torch.Generator().manual_seed(2)
    system = torch.randint(0, 97, (13,), generator=g).tolist()
    prompts = [system + torch.randint(0, 97, (int(n),), generator=g).tolist() for n in torch.randint(1, 12, (6,),
                                                                                                     generator=g)]
    trace = poisson_trace(prompts, TraceConfig(n_requests=10, rate=100.0, mean_output=8, max_output=20))
    cfg = EngineConfig(max_batch=4, block_size=4)
    res = serve_side_by_side(model, trace, ("continuous", "continuous+prefix", "chunked+prefix"), cfg)
    for r in trace:
        ref = generate(model, list(r.prompt), GenerateConfig(max_new_tokens=r.max_new_tokens)).tokens
        for name, out in res.items():
            assert next(x for x in out.requests if x.rid == r.rid).tokens == ref, (name, r.rid)
    # arrivals 100 s apart: each request comes to an idle engine and is prefilled alone (in arrival order), so
    # request i finds the longest run of full blocks it shares with an earlier prompt j: at most j's full prompt
    # blocks, and never its own last token (the pool is large enough that nothing is evicted; freed blocks keep
    # their index). The system prompt alone gives 3 blocks (12 tokens; its 13th token shares a block with the
    # question); a repeated prompt gives more
    def shared_blocks(a, b):
        n = 0
        while n < min(len(a) - 1, len(b)) // 4 and a[4 * n:4 * n + 4] == b[4 * n:4 * n + 4]:
            n += 1
        return n

    order = sorted(trace, key=lambda r: r.arrival_s)
    want = sum(4 * max(shared_blocks(r.prompt, e.prompt) for e in order[:i]) for i, r in enumerate(order) if i)
    assert want >= 12 * (len(trace) - 1)
    spaced = [dataclasses.replace(r, arrival_s=100.0 * i) for i, r in enumerate(order)]
    assert serve(model, spaced, "continuous+prefix", cfg).cached_prompt_tokens == want
    assert res["continuous"].cached_prompt_tokens == 0
    # at 100 requests/s both engines admit several requests in one iteration, before any of their prompts ran:
    # those find nothing from each other
    for name in ("continuous+prefix", "chunked+prefix"):
        assert 0 < res[name].cached_prompt_tokens <= want, name
    with pytest.raises(ConfigError, match="prefix caching needs the paged cache"):
        serve_side_by_side(model, trace, ("static+prefix",), cfg)
    with pytest.raises(ConfigError, match="'continuous\\+lru'"):
        serve_side_by_side(model, trace, ("continuous+lru",), cfg)
