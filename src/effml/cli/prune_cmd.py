"""`effml prune`: fine-grained, channel or N:M pruning of a model; size, FLOPs, accuracy, predicted and measured
latency before and after; the pruned model written as safetensors.

The shared steps of `effml prune` and `effml quantize` (flags, prepare, finish) live here too.
"""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, parse_shape, print_json

DATASETS = ("fashion-mnist", "digits")


def add_common(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="package.module:callable returning an nn.Module (e.g. effml.zoo:lenet5)")
    src.add_argument("--config", help="a bundled model config, built with random weights on the CPU (e.g. bert-base)")
    p.add_argument("--input-shape", help="input shape for --model without a zoo entry, e.g. 1,1,28,28")
    p.add_argument("--batch", type=int, default=1, help="batch size of the profiled and timed input (default 1)")
    p.add_argument("--seq", type=int, help="sequence length for --config")
    p.add_argument("--weights", help="trained weights: a state dict (.safetensors or torch.save) or an effml checkpoint")
    p.add_argument("--data", choices=DATASETS, help="measure accuracy on this data set (grayscale, resized to the model)")
    p.add_argument("--train-limit", type=int, help="use a random subset of N training images")
    p.add_argument("--test-limit", type=int, help="use a random subset of N test images")
    p.add_argument("--train-epochs", type=float, default=0, help="train the dense model first (needs --data)")
    p.add_argument("--finetune-epochs", type=float, default=0, help="fine-tune after compressing (needs --data)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate for training / fine-tuning (Adam)")
    p.add_argument("--hw", default="local", help="device for the latency prediction (default local; 'none' skips)")
    p.add_argument("--no-measure", action="store_true", help="skip the measured latency")
    p.add_argument("--rounds", type=int, default=10, help="timing rounds (before/after alternately)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the compressed model here (.safetensors)")
    add_json_flag(p)


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model (fine, channel, n:m) and show what it saves",
                       description="Prune, optionally fine-tune with the masks held, then compare size, FLOPs, "
                                   "accuracy and latency (predicted on --hw, measured here) before and after.")
    add_common(p)
    p.add_argument("--kind", default="fine", choices=("fine", "channel", "n:m"))
    p.add_argument("--sparsity", type=float, default=0.5,
                   help="fraction removed: of the weights (fine) or of every group's channels (channel)")
    p.add_argument("--per-layer", help="layer=sparsity pairs, comma-separated (e.g. features.0=0.3,classifier.1=0.9)")
    p.add_argument("--scope", default="global", choices=("global", "layer"), help="fine: one threshold or per layer")
    p.add_argument("--criterion", default="l1", choices=("l1", "l2", "taylor"), help="channel importance")
    p.add_argument("--nm", default="2:4", help="n:m pattern (default 2:4)")
    p.add_argument("--exclude", default="", help="layer names left alone, comma-separated")
    p.set_defaults(run=run)


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
    """Resolve the model, load weights, load data, train if asked: (spec, data, accuracy before, dense copy)."""
    import copy

    import torch

    from effml.compress.workflow import data_for, load_weights
    from effml.errors import ConfigError
    from effml.models import resolve
    from effml.zoo.training import evaluate, train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.train_epochs or args.finetune_epochs) and not args.data:
        raise ConfigError("--train-epochs and --finetune-epochs need --data")
    torch.manual_seed(args.seed)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    spec = resolve(config=args.config, model=args.model, input_shape=shape, batch=args.batch, seq=args.seq,
                   device="cpu")
    spec.model.eval()
    if args.weights:
        load_weights(spec.model, args.weights)
    data = None
    if args.data:
        data = data_for(tuple(spec.args[0].shape), args.data, seed=args.seed, train_limit=args.train_limit,
                        test_limit=args.test_limit)
        if args.train_epochs:
            with progress_bar() as bar:
                task = bar.add_task("training", total=1.0)
                train_classifier(spec.model, data, epochs=args.train_epochs, lr=args.lr, seed=args.seed, evaluate_after=False,
                    progress=lambda what, f: bar.update(task, completed=f, description=what))
    acc = evaluate(spec.model, data.test) if data else None
    return spec, data, acc, copy.deepcopy(spec.model).eval()


def finetune(args, model, data, step_hook=None) -> None:
    from effml.zoo.training import train_classifier

    with progress_bar() as bar:
        task = bar.add_task("fine-tuning", total=1.0)
        train_classifier(model, data, epochs=args.finetune_epochs, lr=args.lr, seed=args.seed + 1, step_hook=step_hook,
            evaluate_after=False, progress=lambda what, f: bar.update(task, completed=f, description=what))


def finish(args, spec, data, acc_before, dense, model, technique: str, config: dict, result: dict,
           stored_bytes: int, change: str, save, notes: list[str]) -> int:
    """Facts after, speed (predicted, measured), save, present."""
    from effml.compress.speed import SpeedCheck, measure_pair, predict_change
    from effml.compress.workflow import CompressionReport, facts
    from effml.errors import EffmlError
    from effml.zoo.training import evaluate

    model.eval()
    acc = evaluate(model, data.test) if data else None
    before = facts(dense, spec.args, accuracy=acc_before, kwargs=spec.kwargs)
    after = facts(model, spec.args, stored_bytes=stored_bytes, accuracy=acc, kwargs=spec.kwargs)
    pred = meas = None
    speed_note = ""
    if args.hw != "none":
        try:
            pred = predict_change(dense, spec.args, change, after=model if change == "channel" else None,
                                  hw=args.hw, kwargs=spec.kwargs)
        except EffmlError as e:
            speed_note = f"no prediction: {e}"
    if not args.no_measure:
        meas = measure_pair(dense, model, spec.args, kwargs=spec.kwargs, rounds=args.rounds)
    out = str(save(args.out)) if args.out else None
    report = CompressionReport(spec.to_dict(), technique, config, before, after, result,
                               SpeedCheck(change, pred, meas, speed_note).to_dict(), out,
                               data.to_dict() if data else None, notes)
    if args.json:
        print_json(report.to_dict())
        return 0
    from effml.compress.present import notes_lines, report_table

    con = console()
    d = report.to_dict()
    con.print(report_table(d))
    for line in notes_lines(d):
        con.print(f"- {line}")
    return 0


def run(args) -> int:
    from dataclasses import asdict

    from effml.compress.io import save_compressed
    from effml.compress.prune import PruneConfig, prune
    from effml.errors import ConfigError

    try:
        n, m = (int(v) for v in args.nm.split(":"))
    except ValueError:
        raise ConfigError(f"--nm {args.nm!r} must look like 2:4") from None
    exclude = tuple(x.strip() for x in args.exclude.split(",") if x.strip())
    cfg = PruneConfig(kind=args.kind, sparsity=args.sparsity, per_layer=parse_per_layer(args.per_layer),
                      scope=args.scope, criterion=args.criterion, n=n, m=m, exclude=exclude)
    spec, data, acc_before, dense = prepare(args)
    calib = data.train if data is not None else None
    res = prune(spec.model, cfg, example_inputs=spec.args, data=calib)
    if args.finetune_epochs:
        finetune(args, spec.model, data, res.masks.apply if res.masks else None)
    if res.masks:
        res.masks.detach()
        res.masks.apply()
    config = asdict(cfg)
    change = "channel" if args.kind == "channel" else "sparse"
    return finish(args, spec, data, acc_before, dense, spec.model, f"prune {args.kind}", config, res.to_dict(),
                  res.stored_bytes, change, lambda path: save_compressed(spec.model, path, info=res.to_dict()),
                  res.notes)
