"""`effml quantize`: linear fake-quant, k-means, int8 (dynamic/static) or int8/int4 weight-only; size, FLOPs,
accuracy, predicted and measured latency before and after; the quantized model written as safetensors."""

from __future__ import annotations

METHODS = ("linear", "kmeans", "int8", "int8-weight", "int4-weight")


def add_parser(sub) -> None:
    from effml.cli.prune_cmd import add_common

    p = sub.add_parser("quantize", help="quantize a model (linear, kmeans, int8, int4/int8 weight-only)",
                       description="Quantize, optionally train with quantization in the loop (--qat-epochs, "
                                   "straight-through), then compare size, FLOPs, accuracy and latency.")
    add_common(p)
    p.add_argument("--method", default="int8", choices=METHODS)
    p.add_argument("--bits", type=int, help="bit width (linear, kmeans; default 8)")
    p.add_argument("--asymmetric", action="store_true", help="linear: asymmetric (zero point) instead of symmetric")
    p.add_argument("--granularity", default="channel", choices=("tensor", "channel", "group"), help="linear")
    p.add_argument("--group-size", type=int, help="linear (granularity group) and int4-weight (default 128)")
    p.add_argument("--mode", default="dynamic", choices=("dynamic", "static"), help="int8")
    p.add_argument("--per-tensor", action="store_true", help="int8 dynamic: one weight scale per tensor")
    p.add_argument("--smooth", type=float, metavar="ALPHA",
                   help="int8 dynamic: SmoothQuant with this migration strength (e.g. 0.8), calibrated on --data "
                        "or the example input")
    p.add_argument("--kernel", default="packed", choices=("packed", "dequant"), help="weight-only kernel")
    p.add_argument("--calibration", type=int, default=512, help="static int8: calibration images (default 512)")
    p.add_argument("--qat-epochs", type=float, default=0,
                   help="linear/kmeans: quantization-aware training epochs (straight-through; needs --data)")
    p.add_argument("--exclude", default="", help="layer names left in float, comma-separated")
    p.set_defaults(run=run)


def run(args) -> int:
    from dataclasses import asdict

    from effml.cli.prune_cmd import finetune, finish, prepare
    from effml.compress.io import save_compressed
    from effml.compress.quantize import QuantConfig, freeze, quantize
    from effml.errors import ConfigError

    qat = args.qat_epochs > 0
    if qat and args.method not in ("linear", "kmeans"):
        raise ConfigError(f"--qat-epochs applies to --method linear or kmeans, not {args.method}")
    if qat and not args.data:
        raise ConfigError("--qat-epochs needs --data")
    if args.out and args.method == "int8" and args.mode == "static":
        raise ConfigError("a static int8 model (an FX graph) cannot be written as safetensors: drop --out, or use "
                          "--mode dynamic")
    exclude = tuple(x.strip() for x in args.exclude.split(",") if x.strip())
    cfg = QuantConfig(method=args.method, bits=args.bits, symmetric=not args.asymmetric,
                      granularity=args.granularity, group_size=args.group_size, mode=args.mode, qat=qat,
                      per_channel=not args.per_tensor, smooth_alpha=args.smooth,
                      kernel=args.kernel, exclude=exclude)
    spec, data, acc_before, dense = prepare(args)
    calib, notes = None, []
    if args.method == "int8" and (args.mode == "static" or args.smooth is not None):
        if data is not None:
            x = data.calibration(args.calibration)
            calib = [x[i:i + 64] for i in range(0, len(x), 64)]
        else:
            calib = [spec.args[0]]
            notes.append("int8 calibrated on the random example input (give --data for real calibration)")
    res = quantize(spec.model, cfg, calibration=calib, example_inputs=spec.args)
    model = res.model
    codes = res.codes
    if qat:
        args.finetune_epochs = args.qat_epochs
        finetune(args, model, data)
        codes = freeze(model)
    elif args.finetune_epochs and args.method in ("linear", "kmeans"):
        raise ConfigError("--finetune-epochs after post-training quantization would train float weights: "
                          "use --qat-epochs")
    change = {"linear": "none", "kmeans": "none"}.get(args.method, args.method)
    if args.method in ("linear", "kmeans"):
        notes.append("fake-quant/k-means weights run on fp32 kernels: the speed is unchanged by design "
                     "(use int8 or *-weight for real integer kernels)")
    config = asdict(cfg)
    return finish(args, spec, data, acc_before, dense, model, f"quantize {res.method}", config, res.to_dict(),
                  res.stored_bytes, change,
                  lambda path: save_compressed(model, path, codes=codes, info=res.to_dict()), res.notes + notes)
