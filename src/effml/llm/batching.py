"""Serving a request trace: static batching vs continuous (iteration-level) batching on the paged cache.

    from effml.llm.serving import EngineConfig, TraceConfig, poisson_trace
    trace = poisson_trace(prompts, TraceConfig(n_requests=48, rate=8.0, mean_output=48))
    result = serve(model, trace, "continuous", EngineConfig(max_batch=8))
    result.throughput, result.latency_p(99), result.ttft_p(50), result.kv

Static (FasterTransformer-style): take up to `max_batch` waiting requests, right-pad their prompts to the
longest, prefill them together, decode in lock step until the longest output is done; every request of the batch
is answered when the batch ends, and new arrivals wait for it. Contiguous cache of B x (longest prompt + longest
output).

Continuous (Orca, Yu et al. 2022; vLLM): every iteration admits waiting requests into free slots (the prompts of
all it admits in one prefill pass, as vLLM's scheduler does), runs one decode step for all running sequences, and
retires finished ones at once, returning their blocks to the paged cache's free list.

The trace, the configuration and the results (latency and TTFT percentiles, KV reserved vs used) are
serving.py's; time is its virtual clock, advanced by each model call's measured wall time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from effml.errors import ConfigError
from effml.llm.generate import argmax, check_request
from effml.llm.kvcache import ContiguousCache, VarlenPagedCache, kv_bytes_per_token
from effml.llm.model import Transformer, compute_dtype
from effml.llm.serving import EngineConfig, Request, RequestResult, ServeResult, _Clock, _drive, _KVMeter
from effml.registries import Registry


ENGINES: Registry = Registry("batching engine")


engine = ENGINES.register


@engine("static")
def _static(model: Transformer, trace: list[Request], cfg: EngineConfig, max_len: int, meter, progress, clock):
    pending, done, steps = list(trace), [], 0
    dtype = compute_dtype(model)
    while pending:
        clock.now = max(clock.now, pending[0].arrival_s)  # idle: wait for the first arrival
        batch = [r for r in pending if r.arrival_s <= clock.now][:cfg.max_batch]
        pending = pending[len(batch):]
        B, P = len(batch), max(len(r.prompt) for r in batch)
        steps_out = max(r.max_new_tokens for r in batch)
        cache = ContiguousCache(model.args, B, P + steps_out, dtype)
        tokens = torch.zeros(B, P, dtype=torch.long)  # right-padded prompts (B, P)
        for b, r in enumerate(batch):
            tokens[b, :len(r.prompt)] = torch.tensor(r.prompt)
        lens = torch.tensor([len(r.prompt) for r in batch])
        t0 = clock.now
        logits = (yield model, (tokens,), {"cache": cache, "pick": lens - 1})[:, -1]  # (B, V)
        meter.prefill_s += clock.now - t0
        meter.prefill_passes += 1
        cache.truncate(lens.tolist())  # forget the pads: later tokens overwrite them
        out = [[t] for t in argmax(logits)]
        meter.logits([r.rid for r in batch], logits)
        first = clock.now
        for _ in range(steps_out - 1):  # lock step until the longest output is done
            meter.add(cache.stats(meter.bpt), cache.lengths)
            nxt = torch.tensor([[o[-1]] for o in out])  # (B, 1)
            logits = (yield model, (nxt,), {"cache": cache})[:, -1]  # (B, V)
            meter.logits([r.rid for r in batch], logits)
            for o, t in zip(out, argmax(logits)):
                o.append(t)
            steps += 1
        for r, o in zip(batch, out):  # everyone is answered when the batch ends
            o = o[:r.max_new_tokens]
            if cfg.stop_token in o:
                o = o[:o.index(cfg.stop_token) + 1]
            done.append(RequestResult(r.rid, r.arrival_s, first, clock.now, len(r.prompt), o))
        if progress:
            progress(len(done), len(trace))
    return done, clock.now, steps


def _blocks_needed(trace: list[Request], bs: int, num_blocks: int):
    """blocks_total(request): the blocks a request holds at its end (its cache ends with prompt + output - 1 tokens:
    the last one is never fed); a ConfigError when the largest request cannot fit the pool at all."""
    def blocks_total(r: Request) -> int:
        return -(-(len(r.prompt) + r.max_new_tokens - 1) // bs)

    worst = max(trace, key=blocks_total)
    need = blocks_total(worst)
    if need > num_blocks:
        raise ConfigError(f"request {worst.rid} needs {need} blocks of {bs} tokens but the pool has {num_blocks}: "
                          f"raise EngineConfig.num_blocks")
    return blocks_total


def _paged_pool(model: Transformer, trace: list[Request], cfg: EngineConfig, max_len: int):
    """The paged engines' cache (cfg.num_blocks, or the contiguous reservation's memory: max_batch x
    ceil(max_len / block_size) blocks) and blocks_total(request), checked first against the pool's size."""
    bs = cfg.block_size
    num_blocks = cfg.num_blocks or cfg.max_batch * -(-max_len // bs)
    blocks_total = _blocks_needed(trace, bs, num_blocks)
    cache = VarlenPagedCache(model.args, num_blocks, bs, compute_dtype(model), prefix_cache=cfg.prefix_cache)
    return cache, blocks_total


def _retire(running: dict, cache, done: list, now: float, stop: int | None, progress, n: int) -> None:
    """Finished sequences (running[rid] = (request, tokens out, first-token time, ...); a sequence still prefilling
    has no tokens yet) leave at once and return their blocks."""
    for rid in [rid for rid, (r, t, *_) in running.items() if t and (len(t) >= r.max_new_tokens or t[-1] == stop)]:
        r, t, first, *_ = running.pop(rid)
        cache.free(rid)
        done.append(RequestResult(rid, r.arrival_s, first, now, len(r.prompt), t))
        if progress:
            progress(len(done), n)


@engine("continuous")
def _continuous(model: Transformer, trace: list[Request], cfg: EngineConfig, max_len: int, meter, progress, clock):
    cache, blocks_total = _paged_pool(model, trace, cfg, max_len)
    pending, done, steps = list(trace), [], 0
    running: dict[int, tuple[Request, list[int], float]] = {}  # rid -> (request, tokens, first token time)
    stop = cfg.stop_token

    def retire() -> None:
        _retire(running, cache, done, clock.now, stop, progress, len(trace))

    while pending or running:
        if not running:
            clock.now = max(clock.now, pending[0].arrival_s)
        # admit arrived requests while a slot is free and the blocks every running sequence may still need
        # (to its last token) leave room for the newcomer's whole request: nobody ever stalls or is preempted
        owed = sum(blocks_total(r) - len(cache.tables[rid]) for rid, (r, _, _) in running.items())
        admitted, rows, queued = [], [], 0  # queued: the prompt tokens of `rows`
        while (pending and pending[0].arrival_s <= clock.now and len(running) + len(admitted) < cfg.max_batch
               and owed + blocks_total(pending[0]) <= cache.allocator.n_free
               and (not admitted or queued + len(pending[0].prompt) <= cfg.max_prefill_tokens)):
            r = pending.pop(0)
            owed += blocks_total(r)
            held = cache.add(r.rid, r.prompt)  # > 0: a cached prefix of the prompt (prefix caching)
            admitted.append(r)
            rows.append(list(r.prompt[held:]))
            queued += len(rows[-1])
        if admitted:  # their prompts in one pass (vLLM's prefill step): every weight read once for all of them
            flat, ends = _flat_pass(cache, [r.rid for r in admitted], rows)  # ends: each prompt's last position
            t0 = clock.now
            logits = yield _logits_at, (model, flat, cache, ends), {}  # (admitted, V)
            meter.prefill_s += clock.now - t0
            meter.prefill_passes += 1
            for r, t in zip(admitted, argmax(logits)):
                running[r.rid] = (r, [t], clock.now)
            meter.logits([r.rid for r in admitted], logits)
        retire()
        if not running:
            continue
        ids = list(running)
        cache.select(ids)
        meter.add(cache.stats(meter.bpt), cache.lengths)
        nxt = torch.tensor([[running[i][1][-1]] for i in ids])  # (B, 1)
        logits = (yield model, (nxt,), {"cache": cache})[:, -1]  # (B, V)
        meter.logits(ids, logits)
        for i, t in zip(ids, argmax(logits)):
            running[i][1].append(t)
        steps += 1
        retire()
    meter.cached_prompt_tokens = cache.cached_tokens
    return sorted(done, key=lambda r: r.rid), clock.now, steps


def _flat_pass(cache: VarlenPagedCache, ids: list, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Select sequences `ids` for one pass that feeds sequence ids[i] the tokens rows[i]: the flat token row
    (1, Σ len) and the position of each row's last token in it (len(rows),)."""
    lens = [len(t) for t in rows]
    cache.select_varlen(ids, lens)
    return torch.tensor([[t for row in rows for t in row]]), torch.tensor(lens).cumsum(0) - 1


def _logits_at(model: Transformer, tokens: torch.Tensor, cache, idx: torch.Tensor) -> torch.Tensor:
    """One forward over the flat token row (1, T); the head only at positions idx (n,) -> logits (n, V)."""
    x = model.hidden(tokens, cache)[0, idx]  # (n, C)
    return model.output(model.norm(x)).float()


@engine("chunked")
def _chunked(model: Transformer, trace: list[Request], cfg: EngineConfig, max_len: int, meter, progress, clock):
    """Continuous batching with chunked prefill (Sarathi-Serve, Agrawal et al. 2024): every iteration is ONE forward
    over a flat row of tokens: the next token of every decoding sequence plus up to `prefill_chunk` prompt tokens
    of admitted sequences still prefilling. The projections and MLP read their weights once per iteration for all
    rows (one matmul per layer); attention runs per sequence over its paged blocks; the LM head scores only the
    rows that emit a token (decode rows, and a prompt's last chunk)."""
    cache, blocks_total = _paged_pool(model, trace, cfg, max_len)
    pending, done, steps = list(trace), [], 0
    running: dict[int, list] = {}  # rid -> [request, tokens out, first token time, prompt tokens prefilled]
    stop = cfg.stop_token

    def retire() -> None:
        _retire(running, cache, done, clock.now, stop, progress, len(trace))

    while pending or running:
        if not running:
            clock.now = max(clock.now, pending[0].arrival_s)
        owed = sum(blocks_total(r) - len(cache.tables[rid]) for rid, (r, _, _, _) in running.items())
        while (pending and pending[0].arrival_s <= clock.now and len(running) < cfg.max_batch
               and owed + blocks_total(pending[0]) <= cache.allocator.n_free):
            r = pending.pop(0)
            owed += blocks_total(r)
            running[r.rid] = [r, [], None, cache.add(r.rid, r.prompt)]  # prefilled: a cached prefix, if any
        budget, ids, rows, emit = cfg.prefill_chunk, [], [], []
        for rid, (r, out, _, done_p) in running.items():
            if done_p < len(r.prompt):  # prefilling: the next chunk of its prompt, within the budget
                n = min(budget, len(r.prompt) - done_p)
                if n == 0:
                    continue
                budget -= n
                rows.append(list(r.prompt[done_p:done_p + n]))
                if done_p + n == len(r.prompt):
                    emit.append(rid)
            else:  # decoding: its last token
                rows.append([out[-1]])
                emit.append(rid)
            ids.append(rid)
        flat, ends = _flat_pass(cache, ids, rows)  # (1, T), (rows,)
        meter.add(cache.stats(meter.bpt), cache.lengths)
        idx = ends[[i for i, rid in enumerate(ids) if rid in emit]]  # (emitting rows,)
        logits = yield _logits_at, (model, flat, cache, idx), {}  # (emitting rows, V)
        meter.logits(emit, logits)
        for rid, row in zip(ids, rows):
            st = running[rid]
            if st[3] < len(st[0].prompt):
                st[3] += len(row)
        for rid, t in zip(emit, argmax(logits)):
            st = running[rid]
            if not st[1]:
                st[2] = clock.now  # first token
            st[1].append(t)
        steps += 1
        retire()
    meter.cached_prompt_tokens = cache.cached_tokens
    return sorted(done, key=lambda r: r.rid), clock.now, steps


@torch.no_grad()
def serve(model: Transformer, trace: list[Request], batching: str = "continuous",
          config: EngineConfig = EngineConfig(), progress: Callable[[int, int], None] | None = None,
          on_logits: Callable[[int, torch.Tensor], None] | None = None) -> ServeResult:
    """Run the trace through an engine (greedy decoding); per-request timings, throughput and KV use.

    on_logits(rid, logits (V,)) sees the logits behind every token a request gets (in order; static batching
    also reports the padding steps after a request is done, which callers cut at its length).
    """
    return serve_side_by_side(model, trace, (batching,), config, progress, on_logits)[batching]


@torch.no_grad()
def serve_side_by_side(model: Transformer, trace: list[Request], batchings=("static", "continuous"),
                       config: EngineConfig = EngineConfig(), progress: Callable | None = None,
                       on_logits: Callable | None = None) -> dict[str, ServeResult]:
    """Serve the same trace with several engines in one process, their model calls interleaved one by one (each
    engine on its own virtual clock), so that load from other processes hits every engine alike.

    progress(done, total) for one engine; progress(name, done, total) when there are several. A name ending in
    "+prefix" runs a paged engine with prefix caching (continuous+prefix, chunked+prefix)."""
    configs = []
    for b in batchings:
        base, plus, opt = b.partition("+")
        if base not in ENGINES or (plus and (opt != "prefix" or base == "static")):
            raise ConfigError(f"batching {b!r} is not one of {', '.join(ENGINES)}, or continuous+prefix / "
                              f"chunked+prefix (prefix caching needs the paged cache)")
        configs.append((base, replace(config, prefix_cache=True) if plus else config))
    if not trace:
        raise ConfigError("serve needs at least one request")
    for r in trace:
        check_request(model, list(r.prompt), r.max_new_tokens)
    max_len = config.max_len or max(len(r.prompt) + r.max_new_tokens for r in trace)
    trace = sorted(trace, key=lambda r: r.arrival_s)
    meters = [_KVMeter(kv_bytes_per_token(model.args, compute_dtype(model)), max_len, on_logits)
              for _ in batchings]
    clocks = [_Clock() for _ in batchings]

    def report(name):
        if progress is None:
            return None
        return progress if len(batchings) == 1 else (lambda d, n: progress(name, d, n))

    gens = [ENGINES[base](model, trace, cfg, max_len, m, report(b), c)
            for b, (base, cfg), m, c in zip(batchings, configs, meters, clocks)]
    out = {}
    for b, (base, _), m, (done, makespan, steps) in zip(batchings, configs, meters, _drive(gens, clocks)):
        out[b] = ServeResult(b, done, makespan, steps, m.summary("contiguous" if b == "static" else "paged"),
                             m.cached_prompt_tokens, *((None, None) if base == "chunked" else
                                                       (m.prefill_s, m.prefill_passes)))
    return out
