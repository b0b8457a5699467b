"""`effml generate`: stream a model's answer; optionally speculative decoding with a draft; choose the KV cache."""

from __future__ import annotations

import sys

from effml.cli.common import add_json_flag, console, nonneg_float, nonneg_int, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text (streams tokens); --speculative DRAFT for speculative decoding",
                       description="Generate with a KV cache (paged, contiguous or none), optionally speculatively.")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default), tiny, tiny-draft")
    p.add_argument("--prompt", required=True, help="the user message (wrapped in the model's chat template)")
    p.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most (default 64)")
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=nonneg_int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--kv", default="paged", help="KV cache: paged (default), contiguous, none (recompute)")
    p.add_argument("--speculative", metavar="DRAFT",
                   help="draft model: smollm2-135m-draft (distilled here; built once, minutes), layers:0,1,29 "
                        "(a layer subset of the target), or a model name")
    p.add_argument("--gamma", default="4", help="draft tokens per target call, or 'auto' (default 4)")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed (default 0)")
    add_json_flag(p)
    p.set_defaults(run=run)


def _gamma(text: str):
    from effml.errors import ConfigError

    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--gamma {text!r} must be a positive integer or 'auto'") from None


def _progress(con, quiet: bool):
    """A rich progress bar for the draft's one-off build (stderr, so --json stays one object on stdout)."""
    if quiet:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), console=con, transient=True)
    tasks: dict = {}

    def cb(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"draft: {stage}", total=total)
            bar.start()
        bar.update(tasks[stage], completed=done)
    return bar, cb


def run(args) -> int:
    from rich.console import Console

    from effml.errors import ConfigError
    from effml.llm.generate import GenerateConfig, generate
    from effml.llm.registry import load_draft
    from effml.models import load_llm
    from effml.llm.speculative import SpecConfig, speculative_generate

    err = Console(stderr=True)
    with err.status(f"loading {args.model} (the first SmolLM2 run converts the GGUF once, ~1 min)",
                    spinner="dots") if not args.json else _null():
        lm = load_llm(args.model)
    tok = lm.tokenizer
    if not args.prompt.strip():
        raise ConfigError("--prompt is empty: give the text to continue or answer")
    ids = tok.encode(args.prompt) if args.raw else tok.chat(args.prompt)
    stop = None if args.ignore_eos else tok.eos_id
    streamed: list[int] = []
    printed = [""]

    def on_token(t: int) -> None:  # decode the whole answer so far and print only what is new (BPE-safe)
        streamed.append(t)
        text = tok.decode(streamed)
        if not args.json and text.startswith(printed[0]):
            sys.stdout.write(text[len(printed[0]):])
            sys.stdout.flush()
            printed[0] = text

    if args.speculative:
        bar, cb = _progress(err, args.json)
        try:
            draft = load_draft(args.speculative, lm, cb)
        finally:
            if bar is not None:
                bar.stop()
        cfg = SpecConfig(gamma=_gamma(args.gamma), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, kv=args.kv, stop_token=stop, seed=args.seed)
        res = speculative_generate(lm.model, draft, ids, cfg, on_token)
    else:
        cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             kv=args.kv, stop_token=stop, seed=args.seed)
        res = generate(lm.model, ids, cfg, on_token)
    text = tok.decode(res.tokens)
    if args.json:
        print_json({"model": lm.name, "prompt": args.prompt, "text": text,
                    "mode": "speculative" if args.speculative else "plain", "draft": args.speculative,
                    "kv": args.kv, "result": res.to_dict()})
        return 0
    sys.stdout.write(text[len(printed[0]):] + "\n")
    from effml.llm.present import generation_line

    console().print(generation_line(res, args.kv), style="dim", highlight=False)
    return 0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
