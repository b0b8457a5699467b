"""What a serving engine is given and what it returns: the request trace (Poisson arrivals), the engine
configuration, per-request and per-run results (throughput, p50/p99 latency and TTFT, KV reserved vs used), and the
virtual clock that times engines served side by side. The engines themselves are in batching.py.

Time: a virtual clock advanced by the measured wall time of each model call, and jumped forward to the next
arrival when the engine is idle (no sleeping). Arrivals are Poisson (exponential gaps at `rate` per second);
each request generates exactly its `max_new_tokens` (no early stop) so every engine does the same useful work.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from effml.errors import ConfigError
from effml.llm.kvcache import KVStats


@dataclass(frozen=True)
class Request:
    rid: int
    arrival_s: float
    prompt: tuple[int, ...]
    max_new_tokens: int


@dataclass(frozen=True)
class TraceConfig:
    n_requests: int = 32
    rate: float = 8.0  # requests per second (Poisson)
    mean_output: float = 48.0  # output lengths: exponential with this mean, clipped to [min_output, max_output]
    min_output: int = 4
    max_output: int = 192
    seed: int = 0

    def __post_init__(self):
        if self.n_requests <= 0 or self.rate <= 0 or self.mean_output <= 0:
            raise ConfigError(f"TraceConfig n_requests, rate, mean_output must be positive, got "
                              f"{self.n_requests}, {self.rate}, {self.mean_output}")
        if not 1 <= self.min_output <= self.max_output:
            raise ConfigError(f"TraceConfig needs 1 <= min_output <= max_output, got {self.min_output}, "
                              f"{self.max_output}")


def poisson_trace(prompts: list[list[int]], config: TraceConfig = TraceConfig()) -> list[Request]:
    """Requests with exponential inter-arrival gaps, prompts drawn from `prompts`, exponential output lengths."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("poisson_trace needs a non-empty list of non-empty prompts")
    g = torch.Generator().manual_seed(config.seed)
    gaps = torch.empty(config.n_requests).exponential_(config.rate, generator=g)  # (N,) seconds
    outs = torch.empty(config.n_requests).exponential_(1.0 / config.mean_output, generator=g)
    which = torch.randint(0, len(prompts), (config.n_requests,), generator=g)
    t, trace = 0.0, []
    for i in range(config.n_requests):
        t += float(gaps[i])
        n = int(min(config.max_output, max(config.min_output, math.ceil(float(outs[i])))))
        trace.append(Request(i, t, tuple(prompts[int(which[i])]), n))
    return trace


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 8
    block_size: int = 16
    num_blocks: int = 0  # 0: the memory of the contiguous reservation, max_batch x ceil(max_len / block_size)
    max_len: int = 0  # 0: the trace's longest prompt + output
    stop_token: int | None = None  # a sequence that emits it is done (benchmarks leave None: fixed lengths)
    prefill_chunk: int = 64  # "chunked": prompt tokens per iteration riding along the decode rows
    # "continuous": prompt tokens in one joint prefill pass at most (vLLM's max_num_batched_tokens); a request past
    # it waits for the next iteration, one longer than the budget alone still runs alone
    max_prefill_tokens: int = 2048
    prefix_cache: bool = False  # paged engines: share the K/V of prompt blocks already computed (kvblocks.py)

    def __post_init__(self):
        if self.prefill_chunk <= 0 or self.max_prefill_tokens <= 0:
            raise ConfigError(f"EngineConfig.prefill_chunk and max_prefill_tokens must be positive, got "
                              f"{self.prefill_chunk}, {self.max_prefill_tokens}")
        if self.max_batch <= 0 or self.block_size <= 0 or self.num_blocks < 0 or self.max_len < 0:
            raise ConfigError(f"EngineConfig: max_batch and block_size must be positive, num_blocks and max_len "
                              f">= 0; got {self.max_batch}, {self.block_size}, {self.num_blocks}, {self.max_len}")


@dataclass
class RequestResult:
    rid: int
    arrival_s: float
    first_token_s: float
    finish_s: float
    prompt_len: int
    tokens: list[int] = field(repr=False)

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s


def _pct(xs: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q / 100)) if xs else float("nan")


@dataclass
class ServeResult:
    batching: str
    requests: list[RequestResult] = field(repr=False)
    makespan_s: float
    steps: int
    kv: dict  # {"paged": {...}, "contiguous": {...}}: time-averaged and peak reserved vs used
    cached_prompt_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache (not computed)
    prefill_s: float | None = None  # time in prefill-only passes (None: the engine mixes prefill into its steps)
    prefill_passes: int | None = None  # how many (static: one per batch; continuous: one per admitting iteration)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of every request (cached_prompt_tokens of them came from the prefix cache)."""
        return sum(r.prompt_len for r in self.requests)

    @property
    def generated_tokens(self) -> int:
        return sum(len(r.tokens) for r in self.requests)

    @property
    def throughput(self) -> float:
        return self.generated_tokens / self.makespan_s

    def latency_p(self, q: float) -> float:
        return _pct([r.latency_s for r in self.requests], q)

    def ttft_p(self, q: float) -> float:
        return _pct([r.ttft_s for r in self.requests], q)

    def to_dict(self) -> dict:
        return {"batching": self.batching, "requests": len(self.requests), "generated_tokens": self.generated_tokens,
                "makespan_s": self.makespan_s, "throughput_tok_s": self.throughput, "steps": self.steps,
                "latency_p50_s": self.latency_p(50), "latency_p99_s": self.latency_p(99),
                "ttft_p50_s": self.ttft_p(50), "ttft_p99_s": self.ttft_p(99), "kv": self.kv,
                "prompt_tokens": self.prompt_tokens,
                "cached_prompt_tokens": self.cached_prompt_tokens, "prefill_s": self.prefill_s,
                "prefill_passes": self.prefill_passes,
                "per_request": [{**asdict(r), "tokens": len(r.tokens)} for r in self.requests]}


class _Clock:
    """Virtual time: model calls advance it by their measured duration; idle time jumps to the next arrival."""

    def __init__(self):
        self.now = 0.0


def _drive(engines: list, clocks: list[_Clock]) -> list:
    """Run engine generators, one model call of each in turn (round robin), timing each call on its engine's
    clock: engines served side by side in one process see the same load from other processes. An engine yields
    (fn, args, kwargs) for every model call, receives its result, and returns its outcome."""
    outs, sent, live = [None] * len(engines), [None] * len(engines), list(range(len(engines)))
    while live:
        for i in list(live):
            try:
                fn, a, kw = engines[i].send(sent[i])
            except StopIteration as stop:
                outs[i] = stop.value
                live.remove(i)
                continue
            t = time.perf_counter()
            sent[i] = fn(*a, **kw)
            if isinstance(sent[i], torch.Tensor) and sent[i].is_cuda:  # the GPU's work, not just its launch
                torch.cuda.synchronize(sent[i].device)
            clocks[i].now += time.perf_counter() - t
    return outs


class _KVMeter:
    """Averages reserved vs used KV over decode steps, for the engine's own cache and a max_len reservation;
    forwards each produced token's logits to `on_logits(rid, logits (V,))` when given (distillation data)."""

    def __init__(self, bytes_per_token: float, max_len: int, on_logits=None):
        self.bpt, self.max_len, self.samples, self.live = bytes_per_token, max_len, [], []
        self.on_logits = on_logits
        self.cached_prompt_tokens = 0  # set by a paged engine at its end (prefix caching)
        self.prefill_s = 0.0  # time in passes that only prefill (static, continuous; chunked mixes them)
        self.prefill_passes = 0

    def logits(self, rids, logits: torch.Tensor) -> None:
        if self.on_logits is not None:
            for rid, row in zip(rids, logits):
                self.on_logits(rid, row)

    def add(self, own: KVStats, live_lengths: list[int]) -> None:
        self.samples.append((own, KVStats(len(live_lengths) * self.max_len, sum(live_lengths), self.bpt)))
        self.live.append(list(live_lengths))

    def waste_by_block_size(self, sizes=(1, 2, 4, 8, 16, 32)) -> dict:
        """What paging with other block sizes would reserve for the same live lengths: ceil(len/bs)·bs each."""
        used = sum(sum(ls) for ls in self.live)
        out = {}
        for bs in sizes:
            res = sum(-(-n // bs) * bs for ls in self.live for n in ls)
            out[bs] = 1 - used / res if res else 0.0
        return out

    def summary(self, own_name: str) -> dict:
        def agg(i):
            res = sum(s[i].reserved_tokens for s in self.samples)
            used = sum(s[i].used_tokens for s in self.samples)
            peak = max((s[i].reserved_tokens for s in self.samples), default=0)
            return {"reserved_tokens_avg": res / max(1, len(self.samples)), "used_tokens_avg": used /
                    max(1, len(self.samples)), "waste": 1 - used / res if res else 0.0,
                    "peak_reserved_bytes": peak * self.bpt}
        return {own_name: agg(0), "max_len_reservation": {**agg(1), "max_len": self.max_len},
                "paged_waste_by_block_size": self.waste_by_block_size(),
                "mean_live_length": sum(map(sum, self.live)) / max(1, sum(map(len, self.live)))}
