"""Device budgets and the cost of a candidate, counted before any training.

    budget = budget_for("stm32f746")                 # SRAM 320 KiB, flash 1 MiB from the catalog
    c = cost_of(space, arch, "stm32f746")            # counted on the meta device: no memory, ~0.1 s
    budget.violations(c)                             # {} when it fits, else {"sram": 1.33, ...} (need / have)

The candidate is counted in its int8 deployment form (`space.build(arch, deploy=True)`: BN folded) on the
meta device with `effml.profile`, at batch 1:
- SRAM = int8 peak activation memory = (the counter's peak of live tensors + the input image) x 1 B / 4 B.
  The counter tracks every tensor created during the forward until Python frees it (tracking.LiveMemory);
  it excludes the input, which an MCU holds in SRAM too, so it is added. All activations are fp32 when
  counted, so int8 is exactly a quarter.
- flash = int8 weight bytes = parameters x 1 B (`Profile.memory("int8")`). Biases stored as int32 (TFLite
  Micro) would add 3 B per output channel; not counted.
- latency and energy = `effml.predict(profile, device, dtype)` (roofline on the catalog device).
MCUs (memory="mcu") check SRAM and flash; other devices (memory="dram") weights + activations against main
memory. Latency and energy budgets are optional on any device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

from effml.errors import ConfigError
from effml.nas.spaces import Arch, Space, get_space
from effml.units import fmt_bytes

MEMORY_MODES = ("auto", "mcu", "dram", "none")
KIB = 1024


@dataclass(frozen=True)
class Cost:
    """What one candidate costs on the device (counted, then predicted)."""

    params: int
    macs: int
    flops: int
    sram_bytes: int  # int8 peak activations + input
    flash_bytes: int  # int8 weights
    latency_s: float
    energy_j: float
    device: str
    dtype: str
    lower_bound: bool = False  # an op without a formula: FLOPs (and latency) are a lower bound

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    """Hard limits on one device; None = unconstrained."""

    device: str
    memory: str  # "mcu" | "dram" | "none"
    sram_bytes: float | None = None
    flash_bytes: float | None = None
    memory_bytes: float | None = None
    latency_s: float | None = None
    energy_j: float | None = None

    def needs(self, c: Cost) -> dict[str, tuple[float, float]]:
        """Every constrained quantity: name -> (need, have)."""
        pairs = {"sram": (c.sram_bytes, self.sram_bytes), "flash": (c.flash_bytes, self.flash_bytes),
                 "memory": (c.sram_bytes + c.flash_bytes, self.memory_bytes),
                 "latency": (c.latency_s, self.latency_s), "energy": (c.energy_j, self.energy_j)}
        return {k: (float(n), float(h)) for k, (n, h) in pairs.items() if h is not None}

    def violations(self, c: Cost) -> dict[str, float]:
        """The budgets `c` breaks: name -> need / have (> 1)."""
        return {k: n / h for k, (n, h) in self.needs(c).items() if n > h}

    def constraints(self, c: Cost) -> dict[str, float]:
        """Optuna constraint values (<= 0 feasible): name -> need / have - 1, one per budget."""
        return {k: n / h - 1.0 for k, (n, h) in self.needs(c).items()}

    def explain(self, c: Cost) -> str:
        parts = []
        for k, (n, h) in self.needs(c).items():
            fmt = (lambda v: f"{v * 1e3:.3g} ms") if k == "latency" else (
                (lambda v: f"{v * 1e3:.3g} mJ") if k == "energy" else (lambda v: fmt_bytes(v, True)))
            parts.append(f"{k} {fmt(n)} of {fmt(h)}" + (f" (over by {n / h:.2f}x)" if n > h else ""))
        return "; ".join(parts) or "no budget"

    def to_dict(self) -> dict:
        return asdict(self)


def budget_for(hw, *, memory: str = "auto", sram_kb: float | None = None, flash_kb: float | None = None,
               latency_ms: float | None = None, energy_mj: float | None = None) -> Budget:
    """The device's budgets from the catalog; sram_kb/flash_kb (KiB) replace the catalog figures."""
    from effml.hardware import get_device

    dev = get_device(hw)
    if memory not in MEMORY_MODES:
        raise ConfigError(f"memory {memory!r} unknown; expected one of {', '.join(MEMORY_MODES)}")
    for name, v in (("sram_kb", sram_kb), ("flash_kb", flash_kb), ("latency_ms", latency_ms),
                    ("energy_mj", energy_mj)):
        if v is not None and not v > 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
    mode = memory if memory != "auto" else ("mcu" if dev.kind == "mcu" or sram_kb or flash_kb else "dram")
    sram = flash = mem = None
    if mode == "mcu":
        sram = sram_kb * KIB if sram_kb else (dev.sram_bytes.value if dev.sram_bytes else None)
        flash = flash_kb * KIB if flash_kb else (dev.flash_bytes.value if dev.flash_bytes else None)
        missing = [f for f, v in (("sram_bytes", sram), ("flash_bytes", flash)) if v is None]
        if missing:
            raise ConfigError(
                f"device {dev.key!r} ({dev.kind}) has no {' / '.join(missing)} figure in the catalog, so it has "
                f"no SRAM/flash budget: pick an MCU (stm32f746, stm32h743), give --sram-kb/--flash-kb, or use "
                f"memory='dram' (main memory)")
    elif mode == "dram":
        if dev.memory_bytes is None:
            raise ConfigError(f"device {dev.key!r} ({dev.kind}) has no memory_bytes figure in the catalog: "
                              f"use memory='mcu' (SRAM/flash) for it")
        mem = float(dev.memory_bytes.value)
    return Budget(dev.key, mode, sram, flash, mem, latency_ms / 1e3 if latency_ms else None,
                  energy_mj / 1e3 if energy_mj else None)


def count(space: Space, arch: Arch):
    """`effml.profile` of the deployment form at batch 1 on the meta device (no memory, no weights)."""
    import torch

    import effml

    arch = space.check(arch)
    with torch.device("meta"):
        model = space.build(arch, deploy=True).eval()
        x = torch.empty(space.input_shape(arch), device="meta")  # (1, C, R, R)
    return effml.profile(model, x, name=space.describe(arch)), x.numel() * x.element_size()


def cost_of(space: Space | str, arch: Arch, hw, dtype: str = "int8") -> Cost:
    """The counted and predicted cost of `arch` on `hw` (cached per space, arch, device and dtype)."""
    space = get_space(space)
    key = tuple(sorted(space.check(arch).items()))
    return _cost(space.name, _freeze(space.data), key, hw if isinstance(hw, str) else hw.key, dtype)


def _freeze(obj):
    import json

    return json.dumps(obj, sort_keys=True)


@lru_cache(maxsize=512)
def _profile(name: str, data_json: str, key: tuple):
    import json

    return count(Space(name, json.loads(data_json)), dict(key))


@lru_cache(maxsize=4096)
def _cost(name: str, data_json: str, key: tuple, hw: str, dtype: str) -> Cost:
    from effml.hardware import get_device, predict

    prof, input_bytes = _profile(name, data_json, key)
    counted = prof.param_bytes / max(prof.params, 1)  # bytes per element the model was counted in (4: fp32)
    sram = round((prof.peak_activation_bytes + input_bytes) / counted)  # int8: 1 B per element
    dev = get_device(hw)
    pred = predict(prof, dev, dtype=dtype)
    total = prof.total()
    return Cost(prof.params, total.macs, total.flops, sram, prof.memory("int8"), pred.time_s, pred.energy.total,
                dev.key, dtype, prof.is_lower_bound)


def predictions(space: Space, arch: Arch, devices: list[tuple[str, str | None]]) -> dict[str, dict]:
    """Per-device predictions in the study store's format: {device: {latency_s, energy_j, usd_per_1m, fits}}."""
    from effml.hardware import predict

    prof, _ = _profile(space.name, _freeze(space.data), tuple(sorted(space.check(arch).items())))
    out = {}
    for name, dtype in devices:
        p = predict(prof, name, dtype=dtype)
        out[name] = {"latency_s": p.time_s, "energy_j": p.energy.total, "usd_per_1m": p.usd_per_1m,
                     "fits": p.fits, "bound": p.bound, "dtype": p.dtype}
    return out


def check_reachable(space: Space, budget: Budget, dtype: str = "int8") -> Cost:
    """The cost of the space's smallest architecture; a ConfigError before any search if even it breaks the
    budget (every cost grows with every parameter, so nothing else in the space could fit)."""
    arch = space.smallest()
    c = cost_of(space, arch, budget.device, dtype)
    over = budget.violations(c)
    if over:
        raise ConfigError(
            f"no architecture of space {space.name!r} can meet the budget on {budget.device}: the smallest one "
            f"({space.describe(arch)}) already breaks {', '.join(over)} ({budget.explain(c)}); loosen "
            f"{', '.join(_FLAG[k] for k in over)} or pick a bigger device")
    return c


_FLAG = {"sram": "--sram-kb", "flash": "--flash-kb", "memory": "the device", "latency": "--latency-ms",
         "energy": "--energy-mj"}
