"""`effml bench`: measured latency percentiles and throughput vs batch, beside the `local` prediction."""

from __future__ import annotations

from effml.cli.common import (
    add_hw_flag,
    add_json_flag,
    add_model_flags,
    console,
    duration,
    one_hw,
    parse_sets,
    parse_shape,
    positive_int,
    print_json,
    unit_fraction,
)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure latency/throughput vs batch on this machine, beside the prediction",
                       description="Warm up, time until the median's 95%% CI is within --ci or the budget ends; "
                                   "p50/p90/p99, throughput, peak RSS, threads; each row beside the `local` "
                                   "prediction (run `effml calibrate` once) and its error.")
    src = p.add_mutually_exclusive_group(required=True)
    add_model_flags(p, group=src)
    src.add_argument("--config", help="a bundled model config (e.g. gpt2), a config.json, a model folder or a hub "
                                      "id (org/name, from the local HF cache): built with random weights")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1), e.g. 1,8,32")
    p.add_argument("--seq", type=positive_int, help="sequence length for --config")
    p.add_argument("--input-shape", help="input shape for --model without a zoo entry (batch from --batch)")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")
    p.add_argument("--budget", type=duration, default=5.0, metavar="SECONDS",
                   help="time budget per batch size, in seconds or with a unit (30s, 2m; default 5)")
    p.add_argument("--ci", type=unit_fraction, default=0.02,
                   help="stop when the 95%% CI half-width <= this x median")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads (default: torch's; 1 with --backend onnxruntime, for both runtimes)")
    p.add_argument("--device", default="cpu", help="where to run: cpu (default), cuda or cuda:N (timed with "
                                                   "CUDA events; peak memory from torch.cuda.max_memory_allocated)")
    p.add_argument("--backend", choices=("pytorch", "onnxruntime"), default="pytorch",
                   help="pytorch (default), or onnxruntime: export with torch.onnx.export and time ORT fp32 and "
                        "ORT dynamic int8 beside PyTorch fp32, interleaved, outputs compared (needs effml[onnx])")
    add_hw_flag(p, default=["local"], help="the device to predict on (default local)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from effml.hardware.sweep import bench, parse_batches
    from effml.measure import MeasureConfig
    from effml.models import resolve

    from effml.measure.device import resolve_device

    batches = parse_batches(args.batch)
    hw = one_hw(args.hw, why=" (the measured rows are compared with one prediction)")
    device = resolve_device(args.device)
    if args.backend == "onnxruntime":
        return _run_onnxruntime(args, batches, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    hw, note = _prediction_target(hw, device)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    cfg = MeasureConfig(budget_s=args.budget, ci_rel=args.ci)

    def make(b: int):
        s = (b, *shape[1:]) if shape else None
        return resolve(config=args.config, model=args.model, input_shape=s, batch=b, seq=args.seq,
                       dtype=args.dtype, device=device, model_args=parse_sets(args.set))

    if args.json:
        res = bench(make, batches, config=cfg, hw=hw)
        res.note = res.note or note
        print_json(res.to_dict())
        return 0
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("bench", total=1.0)
        res = bench(make, batches, config=cfg, hw=hw,
                    progress=lambda what, frac: bar.update(task, completed=frac, description=what))
    res.note = res.note or note
    from effml.hardware.present import bench_table

    con = console()
    con.print(bench_table(res))
    r0 = res.rows[0]
    where = (f"{r0.extra['device_name']} (compute capability {r0.extra['device_capability']}), CUDA events"
             if "device_name" in r0.extra else f"{r0.threads} threads, CPU capability {r0.cpu_capability}")
    con.print(f"{where}; p50 is compared with the prediction")
    if res.note:
        con.print(f"no prediction: {res.note}")
    return 0


def _prediction_target(hw: str, device: str) -> tuple[str | None, str]:
    """A GPU run is not compared with the CPU's calibration: `local` is kept only when it was calibrated on a GPU."""
    if not device.startswith("cuda") or hw != "local":
        return hw, ""
    from effml.errors import EffmlError
    from effml.hardware import get_device

    try:
        kind = get_device("local").kind
    except EffmlError:
        return hw, ""  # bench itself reports the missing calibration
    if kind == "gpu":
        return hw, ""
    return None, ("the `local` device is this machine's CPU calibration; for a GPU run pass --hw with the "
                  "card (e.g. --hw h100-sxm) or run `effml calibrate --device cuda`")


def _run_onnxruntime(args, batches: list[int], device: str) -> int:
    """PyTorch fp32 vs ORT fp32 and ORT int8, per batch size, interleaved in this process."""
    import torch

    from effml.errors import ConfigError
    from effml.measure.onnxrt import OrtConfig, compare_backends
    from effml.models import resolve

    if device != "cpu":
        raise ConfigError(f"--backend onnxruntime runs on the CPU (the onnxruntime wheel has no CUDA provider); "
                          f"drop --device {args.device}")
    if args.dtype != "fp32":
        raise ConfigError(f"--backend onnxruntime compares fp32 and int8 variants of an fp32 model; drop --dtype "
                          f"{args.dtype}")
    ort_cfg = OrtConfig(threads=args.threads or 1)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    results = []
    for b in batches:
        spec = resolve(config=args.config, model=args.model, input_shape=(b, *shape[1:]) if shape else None,
                       batch=b, seq=args.seq, dtype="fp32", device="cpu", model_args=parse_sets(args.set))
        kwargs = dict(spec.kwargs)
        if spec.config is not None and spec.config.task == "causal-lm":
            # both runtimes run one full forward without a KV cache; an explicit all-ones mask (the same attention)
            # keeps transformers off its packed-sequence check (torch.diff: no ONNX symbolic at opset 17)
            kwargs |= {"use_cache": False, "attention_mask": torch.ones_like(spec.args[0])}
        results.append(compare_backends(spec.model, spec.args, kwargs=kwargs, name=spec.name, config=ort_cfg,
                                        rounds=10_000, budget_s=args.budget))
    if args.json:
        print_json({"backend": "onnxruntime", "results": [r.to_dict() for r in results]})
        return 0
    from rich.table import Table

    table = Table(title=f"{results[0].model}: PyTorch vs ONNX Runtime (interleaved, {ort_cfg.threads} thread(s))")
    for col in ("batch", "inputs", "variant", "p50 ms", "x fp32", "cosine", "max |err|", "file MB", "rounds"):
        table.add_column(col, justify="right")
    errors = []
    for b, cmp in zip(batches, results):
        for r in cmp.rows:
            if r.error:
                errors.append(f"{r.variant} (batch {b}): {r.error}")
                continue
            x = cmp.speedup(r)
            table.add_row(str(b), "x".join(map(str, cmp.input_shapes[0])), r.variant, f"{1e3 * r.p50_s:.3f}",
                          f"{x:.2f}", f"{r.cosine:.5f}", f"{r.max_abs_err:.2e}",
                          f"{r.size_bytes / 1e6:.1f}" if r.size_bytes else "", str(len(r.times_s)))
    con = console()
    con.print(table)
    c0 = results[0]
    con.print(f"torch {c0.versions['torch']}, onnxruntime {c0.versions['onnxruntime']}, CPU capability "
              f"{c0.cpu_capability}; cosine and max |err| against PyTorch fp32 on the same inputs")
    for e in errors:
        con.print(f"[yellow]not run:[/] {e}")
    for b, cmp in zip(batches, results):
        if cmp.note:  # the window was disturbed (effml.measure.onnxrt.disturbed_note): its ratios are not shown as-is
            con.print(f"[yellow]batch {b}: timing disturbed:[/] {cmp.note}")
    return 0
