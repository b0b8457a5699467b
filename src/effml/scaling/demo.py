"""A real, small scaling study: tiny character-level GPTs trained on the King James Bible at several (N, D).

Each run trains one `GPT` from scratch on D training tokens (D = steps · batch · block, a fraction of one
epoch of the 3.7 M-character training split, so no token is seen twice) with AdamW and a cosine schedule whose
length matches D (Chinchilla's point: a schedule longer than the run overestimates the loss at D). The final
loss is measured on the same fixed, seeded validation windows for every run, so the comparison between runs
does not carry sampling noise of its own.

N is the non-embedding parameter count (Kaplan et al. 2020): at these sizes the 65×d token and T×d position
tables are a large, size-independent share that bends a power law in total parameters. The total is kept too.
Compute is reported as 6·N·D (the law's C); the attention term 6·L·T·d per token is reported separately.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from effml.errors import ConfigError

# (n_layer, n_embd) of the model sizes the benchmark uses; head size 16 (d/16 heads). No 1-layer model: it
# stays on the ~2.3-nat bigram plateau for ~1000-2000 steps (measured), two layers leave it after ~250-450.
DEMO_SIZES = ((2, 32), (2, 48), (2, 64), (3, 96))
DEMO_TOKENS = (250_000, 500_000, 1_000_000)
# peak learning rate = LR_WIDTH / n_embd (μP-style 1/width): the best of a 2× sweep at d = 32 (0.02) and
# d = 64 (0.01) on 250k KJV tokens
LR_WIDTH = 0.64


@dataclass(frozen=True)
class RunSpec:
    """One training run: a model shape and a token budget; the recipe is shared by all runs."""

    n_layer: int
    n_embd: int
    tokens: int  # training tokens D (rounded to whole steps)
    head_size: int = 16
    batch_size: int = 16
    block_size: int = 32  # 512 tokens per step: steps, not tokens, limit these tiny runs
    lr: float | None = None  # peak AdamW learning rate; None = LR_WIDTH / n_embd
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1  # cosine decays to lr · min_lr_frac
    weight_decay: float = 0.0
    eval_batches: int = 16  # validation windows: eval_batches · batch_size · block_size tokens
    seed: int = 0

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "tokens", "head_size", "batch_size", "block_size", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"RunSpec.{name} must be positive, got {getattr(self, name)!r}")
        if self.n_embd % self.head_size:
            raise ConfigError(f"RunSpec.n_embd={self.n_embd} is not a multiple of head_size={self.head_size}")
        if (self.lr is not None and not self.lr > 0) or not 0 <= self.warmup_frac < 1 or not 0 <= self.min_lr_frac <= 1:
            raise ConfigError(f"RunSpec lr={self.lr}, warmup_frac={self.warmup_frac}, "
                              f"min_lr_frac={self.min_lr_frac} out of range")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else LR_WIDTH / self.n_embd

    @property
    def steps(self) -> int:
        return max(1, round(self.tokens / (self.batch_size * self.block_size)))

    def gpt_config(self):
        from effml.zoo.gpt import GPTConfig

        return GPTConfig(vocab_size=65, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_embd // self.head_size, n_embd=self.n_embd)


@dataclass(frozen=True)
class RunResult:
    n_layer: int
    n_embd: int
    params: int  # non-embedding parameters, the N of the fit
    total_params: int
    tokens: int  # D actually trained on: steps · batch · block
    steps: int
    flops: float  # 6·N·D
    attn_flops: float  # 6·L·T·d·D, not in 6ND
    train_loss: float  # mean over the last 10% of steps
    val_loss: float  # nats/char on the fixed validation windows
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, spec: RunSpec) -> float:
    """Linear warmup then cosine to min_lr_frac·lr, over exactly spec.steps steps."""
    warm = max(1, int(spec.warmup_frac * spec.steps))
    if step < warm:
        return spec.peak_lr * (step + 1) / warm
    progress = (step - warm) / max(1, spec.steps - warm)
    return spec.peak_lr * (spec.min_lr_frac + (1 - spec.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_run(spec: RunSpec, corpus=None) -> RunResult:
    """Train one tiny GPT on KJV for spec.tokens tokens and measure its validation loss."""
    import torch
    import torch.nn.functional as F

    from effml.train import core
    from effml.zoo.gpt import GPT, init_gpt_weights
    from effml.zoo.text import BatchSampler, kjv_corpus

    corpus = corpus if corpus is not None else kjv_corpus()
    cfg = spec.gpt_config()
    if spec.tokens > corpus.train.numel():
        raise ConfigError(f"RunSpec.tokens={spec.tokens} exceeds the {corpus.train.numel()} training tokens "
                          "(the law assumes no repeated data)")
    torch.manual_seed(spec.seed)
    model = GPT(cfg)
    init_gpt_weights(model)  # nanoGPT's, residual projections scaled by 1/sqrt(2 n_layer)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.peak_lr, betas=(0.9, 0.95), weight_decay=spec.weight_decay)
    sampler = BatchSampler(corpus.train, spec.batch_size, spec.block_size, seed=spec.seed)
    t0 = time.perf_counter()
    tail, tail_from = [], int(0.9 * spec.steps)
    model.train()
    for s in core.iterate(sampler, spec.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(s.index, spec)
        x, y = s.batch  # (B, T), (B, T)
        logits = model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        core.update(loss, opt, clip_norm=1.0, clip_params=model.parameters())
        if s.index >= tail_from:
            tail.append(loss.item())
    val = evaluate(model, corpus.val, spec)
    seconds = time.perf_counter() - t0
    N = cfg.non_embedding_params()
    D = spec.steps * spec.batch_size * spec.block_size
    return RunResult(spec.n_layer, spec.n_embd, N, sum(p.numel() for p in model.parameters()), D, spec.steps,
                     6.0 * N * D, 6.0 * spec.n_layer * spec.block_size * spec.n_embd * D,
                     sum(tail) / len(tail), val, seconds)


def evaluate(model, val_tokens, spec: RunSpec) -> float:
    """Mean cross-entropy (nats/char) on eval_batches fixed windows (seed 1234, the same for every run)."""
    import torch.nn.functional as F

    from effml.train import core
    from effml.zoo.text import BatchSampler

    sampler = BatchSampler(val_tokens, spec.batch_size, spec.block_size, seed=1234)
    total = 0.0
    with core.evaluating(model):
        for _ in range(spec.eval_batches):
            x, y = sampler()  # (B, T), (B, T)
            logits = model(x)  # (B, T, vocab)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    return total / spec.eval_batches


def grid_specs(sizes=DEMO_SIZES, tokens=DEMO_TOKENS, **recipe) -> list[RunSpec]:
    """Every (size, tokens) pair, smallest compute first."""
    specs = [RunSpec(L, d, D, **recipe) for (L, d) in sizes for D in tokens]
    return sorted(specs, key=lambda s: s.gpt_config().non_embedding_params() * s.tokens)


def run_grid(specs: list[RunSpec], threads: int = 2, progress=None) -> list[RunResult]:
    """Train every spec in turn (torch limited to `threads`); `progress(what, frac)` after each run, `what`
    naming the run and its validation loss: "run 3/12: L=2 d= 48 N=  56000 D=  500000 val=2.1234 (31.2 s)"."""
    import torch

    from effml.zoo.text import kjv_corpus

    torch.set_num_threads(threads)
    corpus = kjv_corpus()
    results = []
    for spec in specs:
        results.append(train_run(spec, corpus))
        if progress is not None:
            r = results[-1]
            progress(f"run {len(results)}/{len(specs)}: L={r.n_layer} d={r.n_embd:3d} N={r.params:7d} "
                     f"D={r.tokens:8d} val={r.val_loss:.4f} ({r.seconds:.1f} s)", len(results) / len(specs))
    return results


def results_to_runs(results: list[RunResult]):
    """The (N, D, loss) arrays the fitter takes, from val losses."""
    import numpy as np

    from effml.scaling.curvefit import Runs

    return Runs(np.array([r.params for r in results], dtype=float), np.array([r.tokens for r in results], dtype=float),
                np.array([r.val_loss for r in results]))


def write_runs_csv(results: list[RunResult], path) -> None:
    """CSV that `effml scale --fit` reads (params, tokens, loss) plus the rest of each run."""
    import csv

    keys = list(RunResult.__dataclass_fields__)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["params", "tokens", "loss", *[k for k in keys if k not in ("params", "tokens")]])
        for r in results:
            d = r.to_dict()
            w.writerow([d["params"], d["tokens"], d["val_loss"], *[d[k] for k in keys if k not in ("params", "tokens")]])
