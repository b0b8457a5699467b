"""Autoregressive generation through a KV-cache strategy: none (recompute), contiguous, paged.

    result = generate(model, prompt_ids, GenerateConfig(max_new_tokens=64, kv="paged"), on_token=print)
    result.tokens, result.tokens_per_s, result.ttft_s

A `Session` is one sequence being decoded: `feed(tokens)` appends tokens and returns their logits, `truncate(n)`
forgets everything after the first n (speculative decoding rolls back rejected tokens with it). Strategies are a
registry (`SESSIONS`). Sampling helpers (`next_probs`, `pick`) are shared with speculative decoding so both draw
from the same distribution.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from effml.errors import ConfigError
from effml.llm.kvcache import ContiguousCache, PagedCache
from effml.llm.model import Transformer, compute_dtype
from effml.registries import Registry


# ---- sampling -----------------------------------------------------------------------------------------------
def next_probs(logits: torch.Tensor, temperature: float, top_k: int = 0) -> torch.Tensor:
    """(..., V) logits -> (..., V) probabilities at `temperature` (> 0), optionally restricted to the top k."""
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


def argmax(logits: torch.Tensor) -> list[int] | int:
    """The greedy token of each row of `logits` (..., V): the id of the largest logit, ties (and NaN, as largest)
    to the lowest id, as torch.argmax. On CPU through numpy: 5 us for SmolLM2's 49152 logits where torch's
    reduction takes 42 us here (benchmarks/bench_kernels.py), ~1% of an int4 decode step. An int for one row (V,), a list for (B, V)."""
    x = logits.detach()
    ids = x.numpy().argmax(-1) if x.device.type == "cpu" and x.dtype == torch.float32 else x.argmax(-1).cpu()
    return int(ids) if x.ndim == 1 else [int(i) for i in ids]


def pick(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator | None) -> int:
    """Greedy (temperature 0: argmax, ties to the lowest id) or one sample from next_probs. logits: (V,)."""
    if temperature == 0:
        return argmax(logits)
    return int(torch.multinomial(next_probs(logits, temperature, top_k), 1, generator=gen))


# ---- sessions: one sequence, one cache strategy ---------------------------------------------------------------
class Session:
    def __init__(self, model: Transformer, max_len: int):
        self.model, self.max_len = model, max_len

    @property
    def length(self) -> int:
        """Tokens held (read from the cache, so every view of it agrees)."""
        raise NotImplementedError

    def feed(self, tokens: list[int], last: int | None = None) -> torch.Tensor:
        """Append `tokens`; return logits (T, V) for them (the last `last` only, if given; none for 0)."""
        raise NotImplementedError

    def truncate(self, n: int) -> None:
        raise NotImplementedError

    def view(self, model: Transformer) -> Session:
        """The same cache, fed through `model` (same architecture): a self-speculative draft's session."""
        other = copy.copy(self)
        other.model = model
        return other


SESSIONS: Registry = Registry("KV session kind")


session_kind = SESSIONS.register


@session_kind("none")
class RecomputeSession(Session):
    """No cache: every call runs the whole sequence again (O(n²) work for n tokens: the baseline)."""

    def __init__(self, model, max_len):
        super().__init__(model, max_len)
        self.history: list[int] = []

    @property
    def length(self):
        return len(self.history)

    def feed(self, tokens, last=None):
        self.history += list(tokens)
        n = len(tokens) if last is None else last
        return self.model(torch.tensor([self.history]), last=n)[0]  # (n, V)

    def truncate(self, n):
        del self.history[n:]


@session_kind("contiguous")
class ContiguousSession(Session):
    def __init__(self, model, max_len):
        super().__init__(model, max_len)
        self.cache = ContiguousCache(model.args, 1, max_len, compute_dtype(model))

    @property
    def length(self):
        return self.cache.lengths[0]

    def feed(self, tokens, last=None):
        return self.model(torch.tensor([list(tokens)]), cache=self.cache, last=last)[0]

    def truncate(self, n):
        self.cache.truncate([n])


@session_kind("paged")
class PagedSession(ContiguousSession):
    block_size = 16

    def __init__(self, model, max_len):
        Session.__init__(self, model, max_len)
        blocks = -(-max_len // self.block_size)
        self.cache = PagedCache(model.args, blocks, self.block_size, compute_dtype(model))
        self.cache.add(0)
        self.cache.select([0])


def new_session(kind: str, model: Transformer, max_len: int) -> Session:
    if kind not in SESSIONS:
        raise ConfigError(f"kv {kind!r} is not one of {', '.join(SESSIONS)}")
    return SESSIONS[kind](model, max_len)


# ---- generate ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    kv: str = "contiguous"
    stop_token: int | None = None  # e.g. the tokenizer's eos id; None: always max_new_tokens
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ConfigError(f"GenerateConfig.max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0 or self.top_k < 0:
            raise ConfigError(f"GenerateConfig.temperature and top_k must be >= 0, got {self.temperature}, "
                              f"{self.top_k}")
        if self.kv not in SESSIONS:
            raise ConfigError(f"GenerateConfig.kv {self.kv!r} is not one of {', '.join(SESSIONS)}")


def check_request(model: Transformer, prompt: list[int], max_new_tokens: int) -> None:
    """Refuse a model effml's engine cannot run, an empty prompt, ids outside the vocabulary, or a request
    longer than the context."""
    if not isinstance(model, Transformer):
        raise ConfigError(f"effml's engine runs effml.llm.model.Transformer, not {type(model).__name__}: convert a "
                          f"transformers Llama/Qwen2/Qwen3/Mistral/Phi-3 model with "
                          f"effml.llm.checkpoint.from_transformers(model) (or load its directory with "
                          f"load_checkpoint); other architectures run in transformers' own generate")
    if len(prompt) == 0:
        raise ConfigError("the prompt is empty: give at least one token")
    V = model.args.vocab_size
    bad = [t for t in prompt if not 0 <= int(t) < V]
    if bad:
        raise ConfigError(f"prompt token ids {bad[:5]} are outside the model's vocabulary [0, {V})")
    ctx = model.args.max_seq_len
    if len(prompt) + max_new_tokens > ctx:
        raise ConfigError(f"request of {len(prompt)} prompt + {max_new_tokens} new tokens = "
                          f"{len(prompt) + max_new_tokens} exceeds the model's context of {ctx} tokens")


@dataclass
class GenerateResult:
    prompt_tokens: int
    tokens: list[int]
    kv: str
    time_s: float
    ttft_s: float  # prefill + first token
    stopped: str  # "stop_token" or "length"
    prefill_s: float = 0.0  # the prompt's pass (all but its last token, which the first decode step feeds)
    step_times_s: list[float] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.time_s if self.time_s > 0 else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("step_times_s")
        return {**d, "new_tokens": len(self.tokens), "tokens_per_s": self.tokens_per_s}


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], config: GenerateConfig = GenerateConfig(),
             on_token: Callable[[int], None] | None = None) -> GenerateResult:
    prompt = [int(t) for t in prompt]
    check_request(model, prompt, config.max_new_tokens)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(config.seed)  # where logits are
    session = new_session(config.kv, model, len(prompt) + config.max_new_tokens)
    out: list[int] = []
    times = []
    t0 = time.perf_counter()
    if len(prompt) > 1:  # the prefill: all but the last token, into the cache (no logits). The last is fed alone, as
        session.feed(prompt[:-1], last=0)  # every later token is, so the numbers match speculative decoding's target,
    prefill = time.perf_counter() - t0
    logits = session.feed(prompt[-1:], last=1)[-1]  # which feeds it with its first proposal, the same path (V,)
    ttft = None
    stopped = "length"
    while True:
        tok = pick(logits, config.temperature, config.top_k, gen)
        out.append(tok)
        times.append(time.perf_counter() - t0)
        ttft = times[0] if ttft is None else ttft
        if on_token is not None:
            on_token(tok)
        if config.stop_token is not None and tok == config.stop_token:
            stopped = "stop_token"
            break
        if len(out) == config.max_new_tokens:
            break
        logits = session.feed([tok], last=1)[-1]  # (V,)
    return GenerateResult(len(prompt), out, config.kv, time.perf_counter() - t0, ttft, stopped, prefill, times)
