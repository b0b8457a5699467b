"""The result of counting: per-call op events, queried by op, by module and in total.

`Profile` holds every op call the counter saw (`events`), so any view can be derived: totals, per-op,
hierarchical per-module, or per-call roofline (the hardware model needs the per-call intensity; summing
first would average it away). Display is elsewhere (`effml.cost.present`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from effml.units import MEMORY_DTYPES, dtype_bytes

PHASES = ("forward", "backward")


@dataclass(slots=True)
class OpEvent:
    """One aten op call. `flops` is None when the op has no formula (then the totals are a lower bound)."""

    op: str  # overload packet, e.g. "aten.mm"
    category: str  # matmul, conv, attention, norm, activation, elementwise, reduction, pool, memory, view, ...
    phase: str  # "forward" | "backward"
    modules: tuple[str, ...]  # active module names, outermost first (root "" excluded)
    flops: int | None
    macs: int
    bytes_read: int
    bytes_written: int
    dtype: str  # dtype the op computes in ("fp32", "bf16", "int64", ...)
    # positional arguments, compact: a tensor as its shape (tuple), a number or int list as itself, else None;
    # e.g. aten.convolution: (input, weight, bias, stride, padding, dilation, transposed, out_padding, groups).
    # Shape-aware latency models (hardware.kernels) read it; None where not recorded.
    args: tuple | None = None


@dataclass
class Stats:
    """Summed cost of a set of op calls. `unsupported_calls` > 0 means `flops` is a lower bound."""

    calls: int = 0
    flops: int = 0
    macs: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    unsupported_calls: int = 0

    def add(self, ev: OpEvent) -> None:
        self.calls += 1
        self.macs += ev.macs
        self.bytes_read += ev.bytes_read
        self.bytes_written += ev.bytes_written
        if ev.flops is None:
            self.unsupported_calls += 1
        else:
            self.flops += ev.flops

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved (0 when nothing moved)."""
        return self.flops / self.bytes if self.bytes else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes": self.bytes, "intensity": self.intensity}


@dataclass
class ModuleStats(Stats):
    """Stats of one module (its own ops and everything it called), plus its parameters and call count."""

    type: str = ""
    params: int = 0
    forward_calls: int = 0


@dataclass
class ModuleInfo:
    type: str
    params: int  # parameters in this module's subtree, each tensor once
    calls: int = 0  # forward calls seen during the run


@dataclass
class Profile:
    """What `effml.profile` counted. Query with total(), by_op(), by_module(), memory(dtype)."""

    events: list[OpEvent]
    params: int
    modules: dict[str, ModuleInfo]
    peak_activation_bytes: int
    unsupported: dict[str, int]
    param_bytes: int = 0  # weights at the dtypes they were profiled in
    buffer_bytes: int = 0
    meta: dict = field(default_factory=dict)
    # parameters one token uses: `params` less the experts a mixture-of-experts router did not pick
    # (Mixtral-8x7B: 12.9 B of 46.7 B); None where every parameter is used (dense models)
    active_params: int | None = None

    # ---- queries -------------------------------------------------------------------------------
    def _events(self, phase: str | None):
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES} or None, got {phase!r}")
        return self.events if phase is None else [e for e in self.events if e.phase == phase]

    def total(self, phase: str | None = None) -> Stats:
        """Summed cost of every op (both phases unless `phase` is 'forward' or 'backward')."""
        s = Stats()
        for ev in self._events(phase):
            s.add(ev)
        return s

    @property
    def flops(self) -> int:
        return self.total().flops

    @property
    def macs(self) -> int:
        return self.total().macs

    @property
    def is_lower_bound(self) -> bool:
        """True when some op had no formula: the FLOP total counts everything else."""
        return bool(self.unsupported)

    def by_op(self, phase: str | None = None) -> dict[str, Stats]:
        """Cost per aten op, most FLOPs first."""
        return self._group(lambda ev: ev.op, phase)

    def by_category(self, phase: str | None = None) -> dict[str, Stats]:
        """Cost per op category (matmul, conv, attention, norm, ...), most FLOPs first."""
        return self._group(lambda ev: ev.category, phase)

    def _group(self, key, phase) -> dict[str, Stats]:
        out: dict[str, Stats] = {}
        for ev in self._events(phase):
            out.setdefault(key(ev), Stats()).add(ev)
        return dict(sorted(out.items(), key=lambda kv: (-kv[1].flops, -kv[1].bytes, kv[0])))

    def by_module(self, phase: str | None = None, depth: int | None = None) -> dict[str, ModuleStats]:
        """Hierarchical cost per module, names as in `named_modules()` ("" is the whole model).

        A module's row holds every op run while it was active, its children's included. A module called
        twice is counted for both calls (`forward_calls` = 2); its parameters are counted once.
        """
        rows: dict[str, ModuleStats] = {}
        for name, info in self.modules.items():
            if depth is None or _depth(name) <= depth:
                rows[name] = ModuleStats(type=info.type, params=info.params, forward_calls=info.calls)
        for ev in self._events(phase):
            rows[""].add(ev)
            for name in dict.fromkeys(ev.modules):  # a module active twice (recursion) counts once
                row = rows.get(name)
                if row is not None:
                    row.add(ev)
        return rows

    def memory(self, dtype: str = "fp32") -> int:
        """Bytes of the weights stored in `dtype` (params x bytes per element; int4 = 0.5 B)."""
        return int(round(self.params * dtype_bytes(dtype)))

    # ---- display (effml.cost.present) ----------------------------------------------------------
    def __str__(self) -> str:
        """A short summary: totals, top ops, what had no formula (not the thousands of events)."""
        from effml.cost.present import text

        return text(self)

    def __repr__(self) -> str:
        return (f"Profile(model={self.meta.get('model', '?')!r}, params={self.params:,}, flops={self.flops:,}, "
                f"events={len(self.events):,}, unsupported={len(self.unsupported)})")

    def table(self, by: str = "module", depth: int = 2):
        """The rich tables `effml profile` prints (summary + per module or per op): `rich.print(p.table())`."""
        from effml.cost.present import render

        return render(self, by=by, depth=depth)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self, events: bool = False, depth: int | None = None) -> dict:
        total = self.total()
        d = {
            "params": self.params,
            "active_params": self.params if self.active_params is None else self.active_params,
            "flops": total.flops,
            "macs": total.macs,
            "bytes": total.bytes,
            "bytes_read": total.bytes_read,
            "bytes_written": total.bytes_written,
            "intensity": total.intensity,
            "lower_bound": self.is_lower_bound,
            "memory": {dt: self.memory(dt) for dt in MEMORY_DTYPES},
            "param_bytes": self.param_bytes,
            "buffer_bytes": self.buffer_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "phases": {ph: self.total(ph).to_dict() for ph in PHASES if any(e.phase == ph for e in self.events)},
            "by_op": {k: v.to_dict() for k, v in self.by_op().items()},
            "by_category": {k: v.to_dict() for k, v in self.by_category().items()},
            "by_module": {k: v.to_dict() for k, v in self.by_module(depth=depth).items()},
            "unsupported": dict(self.unsupported),
            "meta": dict(self.meta),
        }
        if events:
            d["events"] = [asdict(e) for e in self.events]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        """Rebuild from `to_dict(events=True)` (the per-call events are the source of every view)."""
        if "events" not in d:
            raise ValueError("Profile.from_dict needs the per-call events: serialise with to_dict(events=True)")
        evs = [OpEvent(**{**e, "modules": tuple(e["modules"])}) for e in d["events"]]
        mods = {k: ModuleInfo(v["type"], v["params"], v["forward_calls"]) for k, v in d["by_module"].items()}
        return cls(evs, d["params"], mods, d["peak_activation_bytes"], dict(d["unsupported"]),
                   d.get("param_bytes", 0), d.get("buffer_bytes", 0), dict(d.get("meta", {})),
                   d.get("active_params") if d.get("active_params") not in (None, d["params"]) else None)


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1
