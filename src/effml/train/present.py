"""Rich renderables for the training commands: `effml train`'s run summary and `effml train-mem`'s breakdown.

Display only: every number comes from a TrainResult or a capacity report (their to_dict is the JSON).
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from effml.units import fmt_bytes, si

MEMORY_PARTS = ("weights", "gradients", "optimizer_states", "activations", "temporary")


def run_summary(r) -> Group:
    """`effml train`: step time, throughput, measured vs estimated peak memory, first and last loss."""
    c = r.config
    title = (f"{r.model} ({si(r.params)} params), {c.precision}, {c.optimizer}, micro-batch {c.micro_batch} x accum "
             f"{c.grad_accum} x {c.world_size} process(es) = {c.global_batch}, checkpointing {c.checkpointing.label()}")
    t = Table(show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("step time (median of timed steps)", f"{r.step_time_s * 1e3:.1f} ms")
    if r.tokens_per_s is not None:
        t.add_row("tokens/s", f"{r.tokens_per_s:,.0f}")
    t.add_row("samples/s", f"{r.samples_per_s:,.1f}")
    if r.measured is not None:
        t.add_row("peak memory, measured (CPU allocator)", fmt_bytes(r.measured.peak_bytes))
    if r.estimated_peak_bytes is not None:
        t.add_row("peak memory, estimated (train-mem)",
                  f"{fmt_bytes(r.estimated_peak_bytes)} ({r.estimate_error:+.1%})")
    t.add_row("loss first -> last", f"{r.losses[0]:.4f} -> {r.losses[-1]:.4f}")
    lines = [Text(title, style="bold"), t, Text(f"data: {r.data}", style="dim")]
    if r.precision_note:
        lines.append(Text(r.precision_note, style="yellow"))
    lines += [Text("note: " + n, style="dim") for n in r.notes]
    return Group(*lines)


def memory_report(report) -> Group:
    """`effml train-mem`: the per-device breakdown, what is alive at the peak, the verdict and the changes tried."""
    est = report.estimate
    c = est.config
    title = (f"{est.model} ({si(est.params)} params): {c.optimizer}, {c.precision}, micro-batch {c.micro_batch} x "
             f"accum {c.grad_accum}, checkpointing {c.checkpointing.label()}, "
             f"{c.world_size} device(s), ZeRO {c.zero_stage}")
    t = Table()
    for col in ("part", "B/param", "size per device", "alive at peak"):
        t.add_column(col, justify="left" if col == "part" else "right")
    at = est.at_peak
    per_param = {k: f"{v / est.params:.3g}" for k, v in est.unsharded.items()}
    for part in MEMORY_PARTS:
        t.add_row(part.replace("_", " "), per_param.get(part, ""), fmt_bytes(est.full[part]), fmt_bytes(at[part]))
    t.add_row("[bold]peak[/bold]", "", "", f"[bold]{fmt_bytes(est.peak)}[/bold]")
    lines = [Text(title, style="bold"), t,
             Text(f"peak during the {est.peak_phase} phase; model states (weights+grads+states) "
                  f"{fmt_bytes(est.model_states)} per device")]
    if est.cast_weight_bytes:
        lines.append(Text(f"activations include {fmt_bytes(est.cast_weight_bytes)} of autocast bf16/fp16 "
                          "weight copies"))
    lines += [Text("note: " + n, style="dim") for n in est.notes]
    lines.append(Text(report.message, style="green" if report.fits else "bold red"))
    if report.tried:
        tried = Table(title="changes tried (in order of cost)", title_justify="left")
        for col in ("change", "flags", "peak per device", "fits"):
            tried.add_column(col)
        for o in report.tried:
            tried.add_row(o.change, o.flags, fmt_bytes(o.peak_bytes), "yes" if o.fits else "no")
        lines.append(tried)
    return Group(*lines)
