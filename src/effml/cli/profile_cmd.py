"""`effml profile`: exact FLOPs, MACs, bytes, memory per dtype and peak activations of a model."""

from __future__ import annotations

from effml.cli.common import (
    add_json_flag,
    add_model_flags,
    console,
    nonneg_int,
    parse_sets,
    parse_shape,
    positive_int,
    print_json,
    refuse_unless,
)


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="count FLOPs, MACs, bytes and memory of one pass",
                       description="Count every aten op of one forward (and --backward) pass of a model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a bundled model config (e.g. llama-2-7b) or a path to an HF config.json")
    add_model_flags(p, group=src)
    p.add_argument("--input-shape", help="input shape for --model, e.g. 1,1,28,28 (zoo models have one)")
    p.add_argument("--batch", type=positive_int, help="batch size (default 1; --input-shape holds its own)")
    p.add_argument("--seq", type=positive_int, help="sequence length for --config (default: the config's)")
    p.add_argument("--dtype", default="fp32", help="dtype to run in: fp32, bf16, fp16 (default fp32)")
    p.add_argument("--device", choices=("meta", "cpu", "cuda"),
                   help="meta (shapes only, no memory) or cpu; default meta for --config, cpu for --model")
    p.add_argument("--backward", action="store_true", help="also count the backward pass")
    p.add_argument("--by", choices=("module", "op"), help="table rows (default module; --json holds both)")
    p.add_argument("--depth", type=nonneg_int, help="module depth shown (default 2; --json: all unless given)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from effml.cost.counter import profile
    from effml.models import resolve

    refuse_unless(args, {"--by": args.by}, not args.json, "to --json (it holds by_module and by_op)")
    refuse_unless(args, {"--batch": args.batch}, not args.input_shape,
                  "with --input-shape (its first size is the batch)")
    refuse_unless(args, {"--depth": args.depth}, args.by != "op", "to --by op (it shows modules)")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    spec = resolve(config=args.config, model=args.model, input_shape=shape, batch=args.batch or 1, seq=args.seq,
                   dtype=args.dtype, device=args.device, model_args=parse_sets(args.set))
    prof = profile(spec.model, *spec.args, forward_kwargs=spec.kwargs, backward=args.backward, name=spec.name)
    if args.json:
        print_json({"model": spec.to_dict(), **prof.to_dict(depth=args.depth)})
        return 0
    from effml.cost.present import render

    console().print(render(prof, by=args.by or "module", depth=2 if args.depth is None else args.depth))
    return 0
