"""Rich renderables for a Profile. Presentation only: every number comes from the Profile's queries."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from effml.cost.profile import Profile, Stats
from effml.units import MEMORY_DTYPES, fmt_bytes, si


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def summary(profile: Profile, title: str = "") -> Table:
    total = profile.total()
    t = Table(title=title or f"{profile.meta.get('model', 'model')} — cost of one pass", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("inputs", ", ".join("x".join(map(str, s)) for s in profile.meta.get("inputs", [])))
    t.add_row("dtype / device", f"{profile.meta.get('dtype')} on {profile.meta.get('device')}")
    t.add_row("parameters", f"{profile.params:,} ({si(profile.params)})")
    if profile.active_params is not None:
        t.add_row("active per token", f"{profile.active_params:,} ({si(profile.active_params)}): the experts a token "
                                      "is routed to, not all of them")
    t.add_row("weights", "  ".join(f"{dt} {fmt_bytes(profile.memory(dt))}" for dt in MEMORY_DTYPES))
    flops = si(total.flops, "FLOPs") + (" (lower bound)" if profile.is_lower_bound else "")
    t.add_row("FLOPs", flops)
    t.add_row("MACs", si(total.macs, "MACs"))
    t.add_row("bytes moved", f"{fmt_bytes(total.bytes)} (read {fmt_bytes(total.bytes_read)}, "
                             f"written {fmt_bytes(total.bytes_written)})")
    t.add_row("arithmetic intensity", f"{total.intensity:.1f} FLOP/B")
    t.add_row("peak activations", fmt_bytes(profile.peak_activation_bytes))
    for phase in ("forward", "backward"):
        s = profile.total(phase)
        if s.calls and profile.meta.get("backward"):
            t.add_row(f"  {phase}", f"{si(s.flops, 'FLOPs')}  ({_share(s.flops, total.flops)})")
    return t


def _row(stats: Stats, total: Stats) -> list[str]:
    return [si(stats.flops), si(stats.macs), fmt_bytes(stats.bytes), f"{stats.intensity:.1f}",
            _share(stats.flops, total.flops)]


def module_table(profile: Profile, depth: int = 2) -> Table:
    total = profile.total()
    t = Table(title=f"by module (depth ≤ {depth})")
    for col, just in (("module", "left"), ("type", "left"), ("params", "right"), ("FLOPs", "right"),
                      ("MACs", "right"), ("bytes", "right"), ("FLOP/B", "right"), ("share", "right"),
                      ("calls", "right")):
        t.add_column(col, justify=just)
    for name, row in profile.by_module(depth=depth).items():
        indent = "  " * (0 if not name else name.count(".") + 1)
        t.add_row(indent + (name or "(total)"), row.type, si(row.params), *_row(row, total), str(row.forward_calls))
    return t


def op_table(profile: Profile) -> Table:
    total = profile.total()
    t = Table(title="by aten op")
    for col, just in (("op", "left"), ("category", "left"), ("calls", "right"), ("FLOPs", "right"),
                      ("MACs", "right"), ("bytes", "right"), ("FLOP/B", "right"), ("share", "right")):
        t.add_column(col, justify=just)
    categories = {ev.op: ev.category for ev in profile.events}
    for op, row in profile.by_op().items():
        if row.flops or row.bytes or row.unsupported_calls:
            t.add_row(op, categories[op], str(row.calls), *_row(row, total))
    return t


def mask_note(profile: Profile) -> Text | None:
    n = profile.meta.get("unknown_masks", 0)
    if not n:
        return None
    return Text(f"{n} attention call(s) had an explicit mask whose values are unknown on meta (too large, or "
                "made from the inputs): every (query, key) pair was counted, an upper bound for a windowed or "
                "padded mask.", style="yellow")


def unsupported_note(profile: Profile) -> Text | None:
    if not profile.unsupported:
        return None
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(profile.unsupported.items()))
    return Text(f"No formula for: {ops}. Their bytes are counted, their FLOPs are not: "
                "the FLOP total is a lower bound.", style="yellow")


def render(profile: Profile, by: str = "module", depth: int = 2) -> Group:
    parts = [summary(profile), module_table(profile, depth) if by == "module" else op_table(profile)]
    notes = [n for n in (unsupported_note(profile), mask_note(profile)) if n is not None]
    return Group(*parts, *notes)


def text(profile: Profile, top: int = 5) -> str:
    """A few plain lines (no markup): totals, the `top` ops by FLOPs with their share, what had no formula.
    `str(profile)` is this; `render` is the full table."""
    total = profile.total()
    meta = profile.meta
    inputs = ", ".join("x".join(map(str, s)) for s in meta.get("inputs", [])) or "?"
    phases = "forward + backward" if meta.get("backward") else "forward"
    lines = [f"Profile of {meta.get('model', 'model')}: one {phases} pass, inputs {inputs}, "
             f"{meta.get('dtype', '?')} on {meta.get('device', '?')}",
             f"  params {profile.params:,} | FLOPs {si(total.flops)}"
             f"{' (lower bound)' if profile.is_lower_bound else ''}"
             f" | MACs {si(total.macs)} | bytes moved {fmt_bytes(total.bytes)} | "
             f"peak activations {fmt_bytes(profile.peak_activation_bytes)} | {len(profile.events):,} op calls"]
    ops = [(op, s) for op, s in profile.by_op().items() if s.flops][:top]
    if ops:
        lines.append("  top ops by FLOPs: " + ", ".join(
            f"{op} {_share(s.flops, total.flops)} ({s.calls} calls)" for op, s in ops))
    if profile.unsupported:
        lines.append("  no FLOP formula (FLOPs are a lower bound): " + ", ".join(
            f"{op} x{n}" for op, n in sorted(profile.unsupported.items())))
    return "\n".join(lines)
