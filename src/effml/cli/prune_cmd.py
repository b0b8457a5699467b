"""`effml prune`: fine-grained, channel or N:M pruning of a model; size, FLOPs, accuracy, predicted and measured
latency before and after; the pruned model written as safetensors.

The shared steps of `effml prune` and `effml quantize` live here too: flags, flags -> per-method config (flags
that do not apply refused), prepare (model, weights, data, dense training), the library's `compress`, present.
"""

from __future__ import annotations

from effml.cli.common import (
    add_json_flag,
    add_model_flags,
    console,
    nonneg_float,
    nonneg_int,
    parse_sets,
    parse_shape,
    positive_float,
    positive_int,
    print_json,
)

DATASETS = ("fashion-mnist", "digits")


def add_common(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    add_model_flags(p, group=src)
    src.add_argument("--config", help="a bundled model config, built with random weights on the CPU (e.g. bert-base)")
    p.add_argument("--input-shape", help="input shape for --model without a zoo entry, e.g. 1,1,28,28")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="batch size of the profiled and timed input (default 1)")
    p.add_argument("--seq", type=positive_int, help="sequence length for --config")
    p.add_argument("--weights", help="trained weights: a state dict (.safetensors or torch.save) or an effml checkpoint")
    p.add_argument("--data", choices=DATASETS, help="measure accuracy on this data set (grayscale, resized to the model)")
    p.add_argument("--train-limit", type=positive_int, help="use a random subset of N training images")
    p.add_argument("--test-limit", type=positive_int, help="use a random subset of N test images")
    p.add_argument("--epochs", dest="train_epochs", type=nonneg_float, default=0,
                   help="train the dense model first, epochs (needs --data)")
    p.add_argument("--finetune-epochs", type=nonneg_float, default=0, help="fine-tune after compressing (needs --data)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate for training / fine-tuning (Adam)")
    p.add_argument("--hw", default="local", help="device for the latency prediction (default local; 'none' skips)")
    p.add_argument("--no-measure", action="store_true", help="skip the measured latency")
    p.add_argument("--device", default="cpu", help="where the before/after speed check runs: cpu (default), cuda "
                                                   "or cuda:N (CUDA events; formats with CPU-only kernels refused)")
    p.add_argument("--rounds", type=positive_int, default=10, help="timing rounds (before/after alternately)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", help="write the compressed model here (.safetensors)")
    add_json_flag(p)


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model (fine, channel, n:m) and show what it saves",
                       description="Prune, optionally fine-tune with the masks held, then compare size, FLOPs, "
                                   "accuracy and latency (predicted on --hw, measured here) before and after. "
                                   "Flags that do not apply to the chosen --kind are refused.")
    add_common(p)
    p.add_argument("--kind", default="fine", choices=PRUNE_KINDS)
    p.add_argument("--sparsity", type=float,
                   help="fine/channel: fraction removed, of the weights (fine) or of every group's channels "
                        "(channel); default 0.5")
    p.add_argument("--per-layer", help="fine/channel: layer=sparsity pairs, comma-separated "
                                       "(e.g. features.0=0.3,classifier.1=0.9)")
    p.add_argument("--scope", choices=("global", "layer"), help="fine: one threshold (global, default) or per layer")
    p.add_argument("--criterion", choices=("l1", "l2", "taylor"), help="channel: importance (default l1)")
    p.add_argument("--nm", help="n:m: the pattern (default 2:4)")
    p.add_argument("--exclude", default="", help="layer names left alone, comma-separated")
    p.set_defaults(run=run)


PRUNE_KINDS = ("fine", "channel", "n:m")


def config_from_flags(method: str, given: dict, flags: dict[str, str], what: str):
    """The per-method config from the flags given (field -> value, None = not given); a flag whose field the
    method's config does not have is refused, naming the flag and the method."""
    import dataclasses

    from effml.compress.configs import CONFIGS, config_from_dict
    from effml.errors import ConfigError

    cls = CONFIGS.get(method)
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in given.items() if v is not None}
    wrong = list(dict.fromkeys(flags[k] for k in given if k not in fields))
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to {what} {method}")
    return config_from_dict({"method": method, **given})


def prune_config(args):
    """`effml prune` flags -> FinePrune | ChannelPrune | NMPrune."""
    from effml.errors import ConfigError

    n = m = None
    if args.nm is not None:
        try:
            n, m = (int(v) for v in args.nm.split(":"))
        except ValueError:
            raise ConfigError(f"--nm {args.nm!r} must look like 2:4") from None
    exclude = tuple(x.strip() for x in args.exclude.split(",") if x.strip()) or None
    given = {"sparsity": args.sparsity, "per_layer": parse_per_layer(args.per_layer), "scope": args.scope,
             "criterion": args.criterion, "n": n, "m": m, "exclude": exclude}
    flags = {"sparsity": "--sparsity", "per_layer": "--per-layer", "scope": "--scope", "criterion": "--criterion",
             "n": "--nm", "m": "--nm", "exclude": "--exclude"}
    return config_from_flags(args.kind, given, flags, "--kind")


def parse_per_layer(text: str | None) -> dict[str, float] | None:
    from effml.errors import ConfigError

    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--per-layer item {item!r} must be name=fraction (e.g. features.0=0.5)") from None
        if not sep or not name.strip():
            raise ConfigError(f"--per-layer item {item!r} must be name=fraction (e.g. features.0=0.5)")
    return out


def progress_bar():
    from rich.console import Console
    from rich.progress import Progress

    return Progress(console=Console(stderr=True), transient=True)


def prepare(args):
    """Resolve the model, load weights, load data, train the dense model if asked: (spec, data)."""
    import torch

    from effml.cli.common import progress_hook
    from effml.compress.workflow import data_for, load_weights
    from effml.errors import ConfigError
    from effml.models import resolve
    from effml.train.classifier import train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    from effml.measure.device import resolve_device

    args.device = resolve_device(args.device)  # no GPU here: one line before any work
    if (args.train_epochs or args.finetune_epochs) and not args.data:
        raise ConfigError("--epochs and --finetune-epochs need --data")
    if args.hw != "none":  # an unknown device is an error before any work, not a note after it
        from effml.cli.common import one_hw

        one_hw([args.hw])
    if args.out:
        from effml.guards import check_output_path

        check_output_path(args.out, "--out", suffixes=(".safetensors",))
    torch.manual_seed(args.seed)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    spec = resolve(config=args.config, model=args.model, input_shape=shape, batch=args.batch, seq=args.seq,
                   device="cpu", model_args=parse_sets(args.set))
    spec.model.eval()
    if args.weights:
        load_weights(spec.model, args.weights)
    data = None
    if args.data:
        data = data_for(tuple(spec.args[0].shape), args.data, seed=args.seed, train_limit=args.train_limit,
                        test_limit=args.test_limit)
        if args.train_epochs:
            with progress_hook("training") as progress:
                train_classifier(spec.model, data, epochs=args.train_epochs, lr=args.lr, seed=args.seed,
                                 evaluate_after=False, progress=progress)
    return spec, data


def run_compress(args, spec, data, config, *, finetune_epochs: float = 0.0, calibration=None):
    """The library's one workflow (effml.compress.workflow.compress) with what the flags ask: fine-tuning
    recipe (--lr, --seed), measurement (--hw, --rounds, --no-measure), a progress bar."""
    from effml.cli.common import progress_hook
    from effml.compress.workflow import Measure, compress
    from effml.train.classifier import TrainLoopConfig

    recipe = TrainLoopConfig(epochs=finetune_epochs, lr=args.lr, seed=args.seed) if finetune_epochs else None
    measure = Measure(hw=None if args.hw == "none" else args.hw, rounds=0 if args.no_measure else args.rounds,
                      forward_kwargs=dict(spec.kwargs or {}), device=args.device)
    with progress_hook(config.name) as progress:
        return compress(spec.model, [config], data=data, finetune=recipe, example_inputs=spec.args,
                        calibration=calibration, measure=measure, progress=progress)


def present(args, spec, data, rep, save, notes: list[str] = ()) -> int:
    """Save if asked, then the report: one JSON object (--json) or a table and its notes."""
    out = str(save(args.out)) if args.out else None
    if args.json:
        d = {"model": spec.to_dict(), **rep.to_dict(), "out": out, "data": data.to_dict() if data else None}
        d["notes"] = d["notes"] + list(notes)
        print_json(d)
        return 0
    from effml.compress.present import notes_lines, report_table

    con = console()
    con.print(report_table(rep, spec.name))
    for line in notes_lines(rep, notes, out):
        con.print(f"- {line}")
    return 0


def run(args) -> int:
    from effml.compress.io import save_compressed

    cfg = prune_config(args)
    spec, data = prepare(args)
    rep = run_compress(args, spec, data, cfg, finetune_epochs=args.finetune_epochs)
    return present(args, spec, data, rep,
                   lambda path: save_compressed(rep.model, path, info=rep.results[-1].to_dict()))
