"""Perplexity of a causal language model on held-out real text, and the one KJV split that defines "held out".

    toks = heldout_tokens(tokenizer, n_tokens=4096)          # (N,) int64: the evaluation slice
    res = perplexity(model, toks, ctx=512, stride=256)        # effml's Transformer, zoo GPT or an HF causal LM
    res.perplexity, res.nll, res.tokens

Perplexity = exp(mean negative log-likelihood per predicted token), in nats. Token j (j >= 1) is predicted
from the at most `ctx` tokens before it. Windows of `ctx` tokens start every `stride` tokens; each window
scores only the tokens no earlier window scored, so every token is scored exactly once and (except in the
first window) with at least ctx - stride tokens of context (transformers' "perplexity of fixed-length models"
recipe). stride = ctx (the default) gives disjoint windows.

The split (King James Bible, 1189 chapters in canonical order, 0-based index i):
  - evaluation: the 12 chapters with i % 100 == 9: Genesis 10, Leviticus 20, Joshua 23, 1 Kings 19, Ezra 7,
    Psalms 32, Psalms 132, Isaiah 31, Ezekiel 8, Haggai 1, John 13, Colossians 3 (about 41 k characters). They
    are among the validation chapters of `effml.zoo.text.kjv_corpus` (i % 10 == 9) that no effml training reads.
  - calibration (GPTQ, AWQ, pruning importance): chapters with i % 10 != 9, the training side of that split.
Nothing that calibrates or trains reads an evaluation chapter, so a quantized model is never scored on text it
was fitted to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from effml.errors import ConfigError
from effml.progress import Progress

EVAL_EVERY, EVAL_OFFSET = 100, 9  # evaluation chapters: i % 100 == 9
CALIB_EVERY = 10  # calibration chapters: i % 10 != 9 (never an evaluation chapter: those have i % 10 == 9)


# ---- the split -----------------------------------------------------------------------------------------------
def heldout_chapters() -> list[str]:
    from effml.zoo.text import kjv_chapters

    return [c for i, c in enumerate(kjv_chapters()) if i % EVAL_EVERY == EVAL_OFFSET]


def calibration_chapters() -> list[str]:
    from effml.zoo.text import kjv_chapters

    return [c for i, c in enumerate(kjv_chapters()) if i % CALIB_EVERY != CALIB_EVERY - 1]


def encode(tokenizer, text: str) -> torch.Tensor:
    """(n,) int64 ids: effml's SmolLM2 Tokenizer, a transformers tokenizer (no special tokens) or a CharTokenizer."""
    if hasattr(tokenizer, "hf"):  # effml.llm.weights.Tokenizer
        ids = tokenizer.encode(text)
    elif callable(tokenizer):  # transformers tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer.encode(text)
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def heldout_tokens(tokenizer, n_tokens: int | None = None) -> torch.Tensor:
    """The evaluation chapters, tokenized and concatenated in order; the first n_tokens (all if None). (N,)"""
    toks = torch.cat([encode(tokenizer, c) for c in heldout_chapters()])
    if n_tokens is not None:
        if not isinstance(n_tokens, int) or n_tokens < 2:
            raise ConfigError(f"heldout_tokens n_tokens must be an int >= 2, got {n_tokens!r}")
        if n_tokens > toks.numel():
            raise ConfigError(f"the held-out KJV slice has {toks.numel()} tokens with this tokenizer; "
                              f"asked for {n_tokens}")
        toks = toks[:n_tokens]
    return toks


def calibration_tokens(tokenizer, n_samples: int = 16, seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) int64: random windows of the calibration chapters (seeded), the GPTQ recipe's
    "random segments of the training text"."""
    if n_samples < 1 or seq_len < 2:
        raise ConfigError(f"calibration needs n_samples >= 1 and seq_len >= 2, got {n_samples}, {seq_len}")
    chapters = calibration_chapters()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(chapters), generator=gen).tolist()
    stream, need = [], n_samples * seq_len * 4  # enough text for distinct windows
    for i in order:
        stream.append(encode(tokenizer, chapters[i]))
        if sum(t.numel() for t in stream) >= need:
            break
    toks = torch.cat(stream)  # (M,)
    if toks.numel() <= seq_len:
        raise ConfigError(f"calibration text has {toks.numel()} tokens, fewer than seq_len={seq_len}")
    starts = torch.randint(0, toks.numel() - seq_len, (n_samples,), generator=gen)  # (n,)
    return toks[starts[:, None] + torch.arange(seq_len)]  # (n_samples, seq_len)


# ---- perplexity ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, nats
    tokens: int  # tokens scored (= len(tokens) - 1)
    windows: int
    ctx: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def logits_of(out) -> torch.Tensor:
    """(B, T, V) logits from a model's output: a tensor, an HF ModelOutput (.logits) or a tuple (first item)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(f"perplexity needs a model returning logits (a tensor or .logits), got {type(out).__name__}")


def max_context(model: nn.Module) -> int | None:
    """The longest input the model accepts, if it says: effml ModelArgs.max_seq_len, zoo GPT block_size, HF config."""
    args = getattr(model, "args", None)
    if args is not None and hasattr(args, "max_seq_len"):
        return int(args.max_seq_len)
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    for key in ("block_size", "max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def windows(n: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, scored) per window: inputs tokens[start:end], targets tokens[start+1:end+1], of which the
    last `scored` are counted. Every target index 1..n-1 is counted exactly once."""
    out, done, s = [], 0, 0  # done: targets up to index `done` are scored
    while done < n - 1:
        e = min(s + ctx, n - 1)
        out.append((s, e, e - max(s, done)))
        done, s = e, s + stride
    return out


@torch.no_grad()
def perplexity(model: nn.Module, tokens, ctx: int, *, stride: int | None = None, batch_size: int = 1,
               progress: Progress | None = None) -> PerplexityResult:
    """exp(mean NLL) of `tokens` ((N,) ids) under `model`, each token predicted from <= ctx tokens before it."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.ndim != 1 or tokens.numel() < 2:
        raise ConfigError(f"perplexity needs a 1-D token stream of at least 2 tokens, got shape {tuple(tokens.shape)}")
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1:
        raise ConfigError(f"perplexity ctx must be an int >= 1, got {ctx!r}")
    stride = ctx if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= ctx:
        raise ConfigError(f"perplexity stride must be an int in [1, ctx={ctx}], got {stride!r}")
    limit = max_context(model)
    if limit is not None and ctx > limit:
        raise ConfigError(f"perplexity ctx={ctx} exceeds the model's context of {limit} tokens; lower ctx")
    if int(tokens.min()) < 0:
        raise ConfigError(f"token ids must be >= 0, got {int(tokens.min())}")
    if batch_size < 1:
        raise ConfigError(f"perplexity batch_size must be >= 1, got {batch_size}")
    was = model.training
    model.eval()
    wins = windows(tokens.numel(), ctx, stride)
    total, count = 0.0, 0
    try:
        i = 0
        while i < len(wins):
            length = wins[i][1] - wins[i][0]
            j = i
            while j < len(wins) and j - i < batch_size and wins[j][1] - wins[j][0] == length:
                j += 1
            batch = wins[i:j]
            x = torch.stack([tokens[s:e] for s, e, _ in batch])  # (b, length)
            y = torch.stack([tokens[s + 1:e + 1] for s, e, _ in batch])  # (b, length)
            logits = logits_of(model(x))  # (b, length, V)
            if int(tokens.max()) >= logits.shape[-1]:
                raise ConfigError(f"token id {int(tokens.max())} is outside the model's vocabulary of "
                                  f"{logits.shape[-1]}: tokens from another tokenizer?")
            logp = torch.log_softmax(logits.float(), dim=-1)  # (b, length, V)
            nll = -logp.gather(-1, y[..., None])[..., 0]  # (b, length)
            for row, (_, _, scored) in enumerate(batch):
                total += float(nll[row, length - scored:].double().sum())
                count += scored
            i = j
            if progress is not None:
                progress(f"perplexity: window {i}/{len(wins)}", i / len(wins))
    finally:
        model.train(was)
    mean = total / count
    return PerplexityResult(math.exp(mean), mean, count, len(wins), ctx, stride)
