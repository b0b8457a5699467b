"""`effml calibrate`: measure this machine (matmul per dtype, bandwidth, overheads) and save it as `local`."""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="measure this machine and save it as the `local` device (~30 s)",
                       description="Measure matmul throughput per dtype (fp32, bf16, int8 where a real kernel "
                                   "exists), STREAM-like triad/copy bandwidth and per-op overheads; save them "
                                   "as the `local` device JSON.")
    p.add_argument("--out", help="where to write the device JSON (default: the user cache dir)")
    p.add_argument("--quick", action="store_true", help="a few seconds, fewer sizes (less accurate)")
    p.add_argument("--threads", type=positive_int, help="torch threads while measuring (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), or cuda / cuda:N: fit that GPU's roofline "
                                                   "(matmul peaks per dtype, copy bandwidth, launch overhead)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from effml.hardware.calibrate import CalibrateConfig, calibrate
    from effml.measure.device import resolve_device

    device = resolve_device(args.device)
    if args.out:  # checked before the measurement, not after it
        from effml.guards import check_output_path

        check_output_path(args.out, "--out", suffixes=(".json",))
    cfg = CalibrateConfig(quick=args.quick, threads=args.threads)
    if device != "cpu":
        from effml.hardware.calibrate_cuda import calibrate_cuda

        def calibrate(cfg, progress=None):  # noqa: F811 - the GPU's calibration, same Calibration result
            return calibrate_cuda(device, quick=cfg.quick, progress=progress)
    if args.json:
        cal = calibrate(cfg)
        path = cal.save(args.out)
        print_json({"path": str(path), "elapsed_s": cal.elapsed_s, "device": cal.raw})
        return 0
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("calibrating", total=1.0)
        cal = calibrate(cfg, progress=lambda what, frac: bar.update(task, completed=frac, description=what))
    path = cal.save(args.out)
    from effml.hardware.present import device_table

    con = console()
    con.print(device_table(cal.device))
    con.print(f"int8: {cal.raw['meta']['int8_kernel']}")
    con.print(f"calibrated in {cal.elapsed_s:.1f} s; saved the `local` device to {path}")
    from effml.hardware.calibrate import busy_warning

    warning = busy_warning(cal.raw["meta"])
    if warning:
        con.print(f"[yellow]warning:[/] {warning}")
    return 0
