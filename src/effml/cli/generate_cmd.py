"""`effml generate`: stream a model's answer; optionally speculative decoding with a draft; choose the KV cache."""

from __future__ import annotations

import sys

from effml.cli.common import add_json_flag, console, nonneg_float, nonneg_int, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text (streams tokens); --speculative DRAFT for speculative decoding",
                       description="Generate with a KV cache (paged, contiguous or none), optionally speculatively.")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (default), tiny, tiny-draft, package.module:callable, or a local Hugging Face "
                        "checkpoint directory (config.json + *.safetensors + tokenizer; Llama, Qwen2, Qwen3, Mistral, "
                        "Phi-3)")
    p.add_argument("--format", default="fp32", choices=("fp32", "bf16", "int8", "int4"),
                   help="weight format in the engine: fp32 (default), bf16, int8 or int4 weight-only (LM head int8)")
    p.add_argument("--group-size", type=positive_int, default=32, help="int4 group size (32, 64, 128; default 32)")
    p.add_argument("--kernel", default="packed", choices=("packed", "exact", "torch"),
                   help="int8/int4 kernels: packed (default: activations rounded to int8 per 32 where the CPU has "
                        "AVX-512 VNNI or AVX2), exact (fp32 activations), torch (torch's kernels only)")
    p.add_argument("--prompt", required=True, help="the user message (wrapped in the model's chat template)")
    p.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most (default 64)")
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=nonneg_int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--kv", default="contiguous", help="KV cache: contiguous (default: one sequence, pre-allocated; the "
                   "fused decode step runs on it), paged (blocks, as a server keeps many sequences), none (recompute)")
    p.add_argument("--speculative", metavar="DRAFT",
                   help="draft: lookup (prompt lookup, no model: for answers that copy the prompt), self-int4 "
                        "(the target in int4), smollm2-135m-draft (distilled here; built once), layers:0,1,29 "
                        "(a layer subset of the target), a model name, or lookup+DRAFT (prompt lookup where the answer "
                        "repeats the text, DRAFT elsewhere: e.g. lookup+self-int4)")
    p.add_argument("--gamma", default=None, help="with --speculative: draft tokens per target call, or 'auto' "
                                                  "(default 4)")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: the model, its KV cache and "
                                                   "sampling on that GPU (--format fp32 or bf16; no --speculative)")
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

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=con, transient=True)
    task: list = []

    def cb(what: str, frac: float) -> None:  # the one progress hook: (what, fraction done)
        if not task:
            task.append(bar.add_task("draft", total=1.0))
            bar.start()
        bar.update(task[0], description=f"draft: {what}", completed=frac)
    return bar, cb


def run(args) -> int:
    from contextlib import ExitStack

    from effml.llm.on_device import check_device

    device = check_device(args.device, fmt=args.format, speculative=args.speculative)  # before loading anything
    with ExitStack() as stack:
        return _run(args, device, stack)


def _run(args, device: str, stack) -> int:
    from rich.console import Console

    from effml.errors import ConfigError
    from effml.llm.generate import GenerateConfig, generate
    from effml.llm.engine import FormatConfig, prepare, to_format
    from effml.llm.registry import load_draft
    from effml.llm.speculative import SpecConfig, speculative_generate
    from effml.models import load_llm

    err = Console(stderr=True)
    if args.gamma is not None and not args.speculative:
        raise ConfigError(f"--gamma {args.gamma} needs --speculative DRAFT (γ is the number of draft tokens per "
                          f"target call)")
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

    draft = None
    if args.speculative:
        bar, cb = _progress(err, args.json)
        try:
            draft = load_draft(args.speculative, lm, cb)
        finally:
            if bar is not None:
                bar.stop()
    notes = to_format(lm.model, FormatConfig(args.format, group_size=args.group_size, kernel=args.kernel))
    from effml.llm.on_device import device_dict, running_on

    stack.enter_context(running_on(lm.model, device))  # a GPU: the model, KV cache and token ids there
    plan = prepare(lm.model)
    draft_model = getattr(draft, "model", draft)  # a LookupFirst's model draft
    if draft_model is not None and draft_model is not lm.model and hasattr(draft_model, "layers"):  # not lookup
        prepare(draft_model)
    if not args.json:
        for n in notes + plan.notes:
            err.print(f"note: {n}", style="dim", highlight=False)
    if args.speculative:
        cfg = SpecConfig(gamma=_gamma(args.gamma or "4"), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, kv=args.kv, stop_token=stop, seed=args.seed)
        res = speculative_generate(lm.model, draft, ids, cfg, on_token)
    else:
        cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             kv=args.kv, stop_token=stop, seed=args.seed)
        res = generate(lm.model, ids, cfg, on_token)
    text = tok.decode(res.tokens)
    roof = _roofline(lm.model, res, len(ids)) if device == "cpu" else None  # its bound is this CPU's bandwidth
    if args.json:
        print_json({"model": lm.name, "prompt": args.prompt, "text": text,
                    "mode": "speculative" if args.speculative else "plain", "draft": args.speculative,
                    "kv": args.kv, "format": args.format, "engine": plan.to_dict(), "notes": notes,
                    "result": res.to_dict(), "roofline": roof.to_dict() if roof else None,
                    "device": device_dict(device)})
        return 0
    sys.stdout.write(text[len(printed[0]):] + "\n")
    from effml.llm.present import generation_line

    console().print(generation_line(res, args.kv), style="dim", highlight=False)
    if roof is not None:
        console().print(f"decode {roof.line()}; format {args.format}, {', '.join(plan.kernels)}", style="dim",
                        highlight=False)
    return 0


def _roofline(model, res, prompt_len: int):
    """The decode rate (tokens after the first, over the time after the first) beside the bandwidth bound."""
    from effml.llm.roofline import decode_roofline

    n = len(res.tokens)
    ttft = getattr(res, "ttft_s", None)
    if n < 2 or ttft is None or res.time_s <= ttft:
        return None
    return decode_roofline(model, (n - 1) / (res.time_s - ttft), prompt_len + n / 2)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
