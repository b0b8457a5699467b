"""`effml predict`: roofline time, bound, energy, $ per 1M inferences and fit, on one or more devices."""

from __future__ import annotations

from effml.cli.common import (
    add_hw_flag,
    add_json_flag,
    add_model_flags,
    console,
    nonneg_int,
    parse_hw,
    parse_sets,
    parse_shape,
    positive_float,
    positive_int,
    print_json,
)

MODEL_DTYPES = ("fp32", "bf16", "fp16", "fp64")  # dtypes a model can be built in; others re-price (int8, fp8)


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict latency, bound, energy, $ and fit on catalog devices",
                       description="Count the model once (on meta for configs), then predict each op call's "
                                   "roofline time on each --hw device.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a bundled model config (e.g. llama-2-7b) or a path to an HF config.json")
    add_model_flags(p, group=src)
    add_hw_flag(p, default=["local"], help="device(s), space- or comma-separated (e.g. h100 a100 t4; default local)")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16, fp16, int8, fp8, int4 where the device has it")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--seq", type=positive_int,
                   help="new tokens this step (--config; e.g. 1 to decode, 2048 to prefill)")
    p.add_argument("--kv-len", type=nonneg_int, help="tokens already in the KV cache (a decode step; causal LMs)")
    p.add_argument("--input-shape", help="input shape for --model, e.g. 1,3,224,224")
    p.add_argument("--price", type=positive_float, help="override the $/hour of every device")
    p.add_argument("--plot", help="write a roofline plot of the op calls (.html; .png needs kaleido)")
    p.add_argument("--ops", type=nonneg_int, default=0, help="also show the N slowest op calls")
    add_json_flag(p)
    p.set_defaults(run=run)


def _work(args, devices):
    from effml.cost.counter import profile
    from effml.hardware import predict_many
    from effml.hardware.kv import decode_inputs, kv_cache_bytes
    from effml.models import resolve

    build_dtype = args.dtype if args.dtype in MODEL_DTYPES else "fp32"
    shape = parse_shape(args.input_shape) if args.input_shape else None
    spec = resolve(config=args.config, model=args.model, input_shape=shape, batch=args.batch,
                   seq=args.seq, dtype=build_dtype, model_args=parse_sets(args.set))
    args_, kwargs, kv = spec.args, spec.kwargs, 0.0
    if args.kv_len is not None:
        device = "meta" if args.config else "cpu"
        args_, kwargs = decode_inputs(spec.model, args.batch, args.seq or 1, args.kv_len, build_dtype, device)
        kv = kv_cache_bytes(spec.model.config, args.batch, args.kv_len + (args.seq or 1), args.dtype)
    prof = profile(spec.model, *args_, forward_kwargs=kwargs, name=spec.name)
    preds = predict_many(prof, devices, dtype=args.dtype, batch=args.batch, kv_cache_bytes=kv,
                         price_per_hour=args.price)
    return spec, prof, preds


def run(args) -> int:
    from effml.errors import ConfigError
    from effml.hardware import get_device

    devices = parse_hw(args.hw)
    if args.plot:
        from effml.guards import check_output_path

        check_output_path(args.plot, "--plot", suffixes=(".html", ".htm", ".png", ".svg", ".pdf"))
    for name in devices:  # unknown names and missing dtypes fail before any counting
        get_device(name).peak_flops(args.dtype)
    if args.kv_len is not None and args.kv_len < 0:
        raise ConfigError(f"--kv-len must be >= 0, got {args.kv_len}")
    if args.json:
        spec, prof, preds = _work(args, devices)
    else:
        with console().status(f"counting {args.config or args.model} and predicting on {', '.join(devices)}"):
            spec, prof, preds = _work(args, devices)
    step = {"batch": args.batch, "seq": args.seq, "kv_len": args.kv_len, "dtype": args.dtype}
    title = (f"{spec.name}: batch {args.batch}" + (f", seq {args.seq}" if args.seq else "")
             + (f", KV cache {args.kv_len}" if args.kv_len is not None else "")
             + f" | {prof.total().flops:.4g} FLOPs, {prof.params:,} params")
    plot = None
    if args.plot:
        from effml.hardware.plot import roofline_figure, write_plot

        plot = str(write_plot(roofline_figure(preds, title), args.plot))
    if args.json:
        top = max(args.ops, 10)
        per = {k: {**p.to_dict(), "top_ops": [o.to_dict() for o in sorted(p.ops, key=lambda o: -o.cost.time_s)[:top]]}
               for k, p in preds.items()}
        body = next(iter(per.values())) if len(per) == 1 else {"devices": per}
        print_json({"model": spec.to_dict(), "step": step, "plot": plot, **body})
        return 0
    from effml.hardware.present import prediction_table, top_ops_table

    con = console()
    con.print(prediction_table(preds, title))
    if prof.is_lower_bound:
        con.print(f"[yellow]lower bound[/yellow]: no FLOP formula for {', '.join(sorted(prof.unsupported))}")
    for p in preds.values():
        if not p.fits:
            con.print(f"[red]{spec.name} does not fit {p.device}[/red]: {p.fit.message}")
    if args.ops:
        con.print(top_ops_table(next(iter(preds.values())), args.ops))
    if plot:
        con.print(f"roofline plot written to {plot}")
    return 0
