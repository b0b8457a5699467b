"""The speculative draft for SmolLM2, made here: a layer subset of the target, distilled on its own generations.

No second model shares SmolLM2's tokenizer, so the draft is cut from the target (DESIGN §8):
  - a few of its blocks (`DraftConfig.layers`), its final norm, and its embedding (shared, frozen: a lookup);
  - an LM head restricted to the `head_tokens` ids the target emits most often in its own answers (the rows of
    the target's tied embedding; FR-Spec, Zhao et al. 2025): the full 49152 x 576 head alone would be 21% of the
    target's per-token weights, which caps the speedup;
  - distilled: the target answers the `prompts("train")` questions greedily (continuous batching engine), and
    the draft is trained to predict those answers' next tokens (sequence-level distillation, Kim & Rush 2016:
    the labels are the target's argmax, which is what greedy acceptance compares).

    draft = load_or_build_draft(target, tokenizer, DraftConfig(), progress=cb)   # cached after the first build
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from effml.errors import ConfigError, ModelError
from effml.llm.model import ModelArgs, Transformer


@dataclass(frozen=True)
class DraftConfig:
    layers: tuple[int, ...] = (0, 1, 29)  # target blocks kept, in order
    head_tokens: int = 4096
    n_prompts: int = 128  # training prompts the target answers
    max_new_tokens: int = 96
    gen_batch: int = 48
    steps: int = 300
    batch: int = 8  # sequences per step
    lr: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ConfigError(f"DraftConfig.layers must be distinct non-negative block indices, got {self.layers}")
        for f in ("head_tokens", "n_prompts", "max_new_tokens", "gen_batch", "batch"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"DraftConfig.{f} must be positive, got {getattr(self, f)}")
        if self.steps < 0 or self.lr <= 0:
            raise ConfigError(f"DraftConfig.steps must be >= 0 and lr > 0, got {self.steps}, {self.lr}")

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def layer_subset(target: Transformer, layers: tuple[int, ...], head_ids: torch.Tensor | None = None) -> Transformer:
    """A draft of the target's blocks `layers` (copies), its final norm and embedding (shared tensor), and an LM
    head over `head_ids` (rows of the target's output matrix; all tokens if None)."""
    a = target.args
    if max(layers) >= a.n_layers:
        raise ConfigError(f"draft layers {layers} outside the target's {a.n_layers} blocks")
    k = 0 if head_ids is None else int(head_ids.numel())
    args = replace(a, n_layers=len(layers), tie_embeddings=False, head_tokens=k)
    with torch.device("meta"):
        draft = Transformer(args)
    draft = draft.to_empty(device="cpu")
    draft.rope.reset()
    with torch.no_grad():
        for i, j in enumerate(layers):
            draft.layers[i].load_state_dict(target.layers[j].state_dict())
        draft.norm.load_state_dict(target.norm.state_dict())
        w = target.output.weight.detach()
        draft.output.weight.copy_(w if head_ids is None else w[head_ids])
        if k:
            draft.head_ids.copy_(head_ids)
    draft.tok_embeddings.weight = target.tok_embeddings.weight  # shared, never trained
    return draft.eval()


def target_generations(target, tokenizer, prompts: list[str], max_new_tokens: int, batch: int,
                       progress: Callable[[int, int], None] | None = None) -> list[tuple[list[int], list[int]]]:
    """The target's greedy answers to `prompts` (chat template), batched: [(prompt ids, answer ids)]."""
    from effml.llm.batching import EngineConfig, Request, serve

    trace = [Request(i, 0.0, tuple(tokenizer.chat(p)), max_new_tokens) for i, p in enumerate(prompts)]
    res = serve(target, trace, "continuous", EngineConfig(max_batch=batch, stop_token=tokenizer.eos_id),
                progress=progress)
    return [(list(trace[r.rid].prompt), r.tokens) for r in sorted(res.requests, key=lambda r: r.rid)]


def frequent_tokens(answers: list[list[int]], k: int, always: tuple[int, ...] = ()) -> torch.Tensor:
    """The k most frequent ids in the answers (plus `always`), sorted ascending: (k,) int64."""
    counts: dict[int, int] = {}
    for ans in answers:
        for t in ans:
            counts[t] = counts.get(t, 0) + 1
    for t in always:
        counts[t] = counts.get(t, 0) + 10**9
    top = sorted(counts, key=lambda t: (-counts[t], t))[:k]
    return torch.tensor(sorted(top), dtype=torch.long)


@dataclass
class DraftReport:
    layers: tuple[int, ...]
    head_tokens: int
    train_sequences: int
    train_answer_tokens: int
    head_coverage: float  # fraction of answer tokens inside the draft's head
    agreement_before: float  # teacher-forced top-1 agreement with the target on held-out answers
    agreement_after: float
    generate_s: float
    train_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(data, batch: int, gen: torch.Generator):
    """(tokens (B, T), labels (B, T)): labels are the next token on answer positions, -100 elsewhere."""
    idx = torch.randint(0, len(data), (batch,), generator=gen).tolist()
    seqs = [data[i] for i in idx]
    T = max(len(p) + len(a) for p, a in seqs) - 1
    x = torch.zeros(batch, T, dtype=torch.long)
    y = torch.full((batch, T), -100, dtype=torch.long)
    for b, (p, a) in enumerate(seqs):
        s = torch.tensor(p + a)
        x[b, :len(s) - 1] = s[:-1]
        y[b, len(p) - 1:len(s) - 1] = s[len(p):]  # predict each answer token from what precedes it
    return x, y


def agreement(draft: Transformer, data, head_map: torch.Tensor) -> float:
    """Teacher-forced: how often the draft's argmax equals the target's greedy token on answer positions."""
    hits = total = 0
    with torch.no_grad():
        for p, a in data:
            s = torch.tensor([p + a])
            pred = draft.head_ids[draft.output(draft.norm(draft.hidden(s[:, :-1]))).argmax(-1)][0]  # (T,)
            tgt = s[0, 1:]
            sl = slice(len(p) - 1, None)
            hits += int((pred[sl] == tgt[sl]).sum())
            total += len(a)
    return hits / max(1, total)


def distill_draft(target: Transformer, tokenizer, config: DraftConfig = DraftConfig(),
                  progress: Callable[[str, int, int], None] | None = None) -> tuple[Transformer, DraftReport]:
    from effml.llm.prompts import prompts

    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    data = target_generations(target, tokenizer, prompts("train", config.n_prompts, config.seed),
                              config.max_new_tokens, config.gen_batch,
                              None if progress is None else (lambda d, n: progress("generate", d, n)))
    gen_s = time.perf_counter() - t0
    held = data[: max(1, len(data) // 10)]  # agreement measured on answers the draft does not train on
    train = data[len(held):]
    answers = [a for _, a in train]
    head_ids = frequent_tokens(answers, config.head_tokens, always=(tokenizer.eos_id,))
    draft = layer_subset(target, config.layers, head_ids)
    head_map = torch.full((target.args.vocab_size,), -100, dtype=torch.long)
    head_map[head_ids] = torch.arange(head_ids.numel())  # token id -> head row (-100: outside the head)
    coverage = sum(int((head_map[torch.tensor(a)] >= 0).sum()) for a in answers) / max(1, sum(map(len, answers)))
    before = agreement(draft, held, head_map)
    params = [p for n, p in draft.named_parameters() if not n.startswith("tok_embeddings")]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(1, config.steps), pct_start=0.1)
    gen = torch.Generator().manual_seed(config.seed)
    draft.train()
    t1 = time.perf_counter()
    for step in range(config.steps):
        x, y = _batches(train, config.batch, gen)
        logits = draft.output(draft.norm(draft.hidden(x)))  # (B, T, K): the head rows only
        y = torch.where(y >= 0, head_map[y.clamp_min(0)], y)  # (B, T) in head-row ids, -100 ignored
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress("train", step + 1, config.steps)
    draft.eval()
    report = DraftReport(config.layers, config.head_tokens, len(train), sum(map(len, answers)), coverage, before,
                         agreement(draft, held, head_map), gen_s, time.perf_counter() - t1)
    return draft, report


def draft_dir(config: DraftConfig):
    from effml.llm.weights import CACHE_NAME, cache_root

    return cache_root() / f"{CACHE_NAME}-draft-{config.key()}"


def load_or_build_draft(target: Transformer, tokenizer, config: DraftConfig = DraftConfig(),
                        progress: Callable[[str, int, int], None] | None = None) -> tuple[Transformer, dict]:
    """The cached draft for `config` (built and saved on the first call); returns (draft, build report dict)."""
    from safetensors.torch import load_file, save_file

    d = draft_dir(config)
    if not (d / "draft.safetensors").is_file():
        draft, report = distill_draft(target, tokenizer, config, progress)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in draft.state_dict().items() if k != "tok_embeddings.weight"}
        save_file(state, d / "draft.safetensors")
        (d / "draft.json").write_text(json.dumps({"args": draft.args.to_dict(), "config": asdict(config),
                                                  "report": report.to_dict()}, indent=2) + "\n")
    meta = json.loads((d / "draft.json").read_text())
    args = ModelArgs.from_dict(meta["args"])
    if args.vocab_size != target.args.vocab_size or args.dim != target.args.dim:
        raise ModelError(f"cached draft at {d} does not fit this target (vocab/dim differ); delete it to rebuild")
    with torch.device("meta"):
        draft = Transformer(args)
    draft = draft.to_empty(device="cpu")
    draft.rope.reset()
    draft.load_state_dict(load_file(d / "draft.safetensors"), strict=False)
    draft.tok_embeddings.weight = target.tok_embeddings.weight
    return draft.eval(), meta["report"]
