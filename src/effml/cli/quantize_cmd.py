"""`effml quantize`: linear fake-quant, k-means, int8 (dynamic/static) or int8/int4 weight-only; size, FLOPs,
accuracy, predicted and measured latency before and after; the quantized model written as safetensors.
Each --method is one config class (effml.compress.configs); flags that do not apply to it are refused."""

from __future__ import annotations

from effml.cli.common import fraction, nonneg_float, positive_int

METHODS = ("linear", "kmeans", "int8-dynamic", "int8-static", "weight-only")


def add_parser(sub) -> None:
    from effml.cli.prune_cmd import add_common

    p = sub.add_parser("quantize", help="quantize a model (linear, kmeans, int8, int4/int8 weight-only)",
                       description="Quantize, optionally train with quantization in the loop (--qat-epochs, "
                                   "straight-through), then compare size, FLOPs, accuracy and latency. Flags that "
                                   "do not apply to the chosen --method are refused.")
    add_common(p)
    p.add_argument("--method", default="int8-dynamic", choices=METHODS)
    p.add_argument("--bits", type=int, help="linear, kmeans (default 8); weight-only: 8 or 4")
    p.add_argument("--asymmetric", action="store_true", help="linear: asymmetric (zero point) instead of symmetric")
    p.add_argument("--granularity", choices=("tensor", "channel", "group"), help="linear (default channel)")
    p.add_argument("--group-size", type=positive_int, help="linear (granularity group) and weight-only --bits 4 (default 128)")
    p.add_argument("--per-tensor", action="store_true", help="int8-dynamic: one weight scale per tensor")
    p.add_argument("--smooth", type=fraction, metavar="ALPHA",
                   help="int8-dynamic: SmoothQuant with this migration strength (e.g. 0.8), calibrated on --data "
                        "or the example input")
    p.add_argument("--kernel", choices=("packed", "a8", "dequant"),
                   help="weight-only kernel: packed (default; fp32 activations), a8 (activations rounded to int8 per "
                        "32: integer dot products where the CPU has AVX-512 VNNI or AVX2), dequant (reference)")
    p.add_argument("--calibration", type=positive_int,
                   help="int8-static and --smooth: calibration images from --data (default 512)")
    p.add_argument("--qat-epochs", type=nonneg_float, default=0,
                   help="linear/kmeans: quantization-aware training epochs (straight-through; needs --data)")
    p.add_argument("--exclude", default="", help="layer names left in float, comma-separated")
    p.add_argument("--layers", default="", help="only these layers, comma-separated (naming a head tied to the "
                                                "embedding quantizes it too)")
    p.set_defaults(run=run)


def quant_config(args):
    """`effml quantize` flags -> the method's config (LinearQuantConfig, KMeansConfig, ...)."""
    from effml.cli.prune_cmd import config_from_flags

    exclude = tuple(x.strip() for x in args.exclude.split(",") if x.strip()) or None
    layers = tuple(x.strip() for x in args.layers.split(",") if x.strip()) or None
    given = {"bits": args.bits, "symmetric": False if args.asymmetric else None, "granularity": args.granularity,
             "group_size": args.group_size, "per_channel": False if args.per_tensor else None,
             "smooth_alpha": args.smooth, "kernel": args.kernel, "qat": True if args.qat_epochs > 0 else None,
             "exclude": exclude, "layers": layers}
    flags = {"bits": "--bits", "symmetric": "--asymmetric", "granularity": "--granularity",
             "group_size": "--group-size", "per_channel": "--per-tensor", "smooth_alpha": "--smooth",
             "kernel": "--kernel", "qat": "--qat-epochs", "exclude": "--exclude", "layers": "--layers"}
    return config_from_flags(args.method, given, flags, "--method")


def run(args) -> int:
    from effml.cli.prune_cmd import prepare, present, run_compress
    from effml.compress.io import save_compressed
    from effml.errors import ConfigError

    cfg = quant_config(args)
    from effml.measure.device import resolve_device
    from effml.study.on_device import check_config_on

    if not args.no_measure:  # the speed check runs the quantized model on --device: it needs a kernel there
        check_config_on(cfg, resolve_device(args.device))
    calibrated = args.method == "int8-static" or args.smooth is not None
    if args.calibration is not None and not calibrated:
        raise ConfigError("--calibration applies to --method int8-static or --smooth")
    if args.finetune_epochs:
        raise ConfigError("--finetune-epochs does not apply to effml quantize: use --qat-epochs (linear, kmeans)")
    if args.qat_epochs and not args.data:
        raise ConfigError("--qat-epochs needs --data")
    if args.out and args.method == "int8-static":
        raise ConfigError("a static int8 model (an FX graph) cannot be written as safetensors: drop --out, or use "
                          "--method int8-dynamic")
    spec, data = prepare(args)
    calib, notes = None, []
    if calibrated:
        if data is not None:
            x = data.calibration(args.calibration or 512)
            calib = [x[i:i + 64] for i in range(0, len(x), 64)]
        else:
            calib = [spec.args[0]]
            notes.append("int8 calibrated on the random example input (give --data for real calibration)")
    rep = run_compress(args, spec, data, cfg, finetune_epochs=args.qat_epochs, calibration=calib)
    if args.method in ("linear", "kmeans"):
        notes.append("fake-quant/k-means weights run on fp32 kernels: the speed is unchanged by design "
                     "(use int8-dynamic, int8-static or weight-only for real integer kernels)")
    return present(args, spec, data, rep,
                   lambda path: save_compressed(rep.model, path, codes=rep.codes, info=rep.results[-1].to_dict()),
                   notes)
