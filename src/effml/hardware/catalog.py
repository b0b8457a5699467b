"""The hardware catalog: devices as data (catalog.json), each figure with its source.

`get_device("h100")` returns a frozen `Device`; `list_devices()` lists the catalog. The special name
`local` is this machine as measured by `effml calibrate` (a JSON file of the same schema under the user's
cache dir, or `$EFFML_LOCAL_DEVICE`); a path to such a JSON file also works as a device name.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator

from effml.errors import ConfigError
from effml.units import DTYPE_BYTES

KINDS = ("mcu", "cpu", "gpu")
MEMORY_LEVELS = ("dram", "sram")
LOCAL = "local"
LOCAL_ENV = "EFFML_LOCAL_DEVICE"


class DeviceError(ConfigError):
    """Unknown device, a dtype the device lacks, or a broken device file."""


@dataclass(frozen=True)
class Figure:
    """One number and where it comes from (datasheet, derivation or measurement)."""

    value: float | list
    source: str

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise DeviceError(f"figure {self.value!r} has no source: every catalog figure must say where it is from")

    def to_dict(self) -> dict:
        return {"value": self.value, "source": self.source}


@dataclass(frozen=True)
class Device:
    """A target: dense peak FLOP/s per dtype, memory bandwidth and capacity, power, price.

    `overhead_s` (per op category, key "default" for the rest), `bw_curve` (bandwidth vs working-set
    bytes) and `efficiency` (per-category fraction of peak compute / bandwidth) are optional; the catalog
    devices leave them out (pure roofline), `effml calibrate` fills them for `local`.
    """

    key: str
    name: str
    kind: str
    peak: dict[str, Figure]
    mem_bw: Figure
    memory_level: str = "dram"
    energy_ref_dtype: str = "fp32"
    sparse: dict[str, Figure] = field(default_factory=dict)
    memory_bytes: Figure | None = None
    sram_bytes: Figure | None = None
    flash_bytes: Figure | None = None
    tdp_w: Figure | None = None
    price: Figure | None = None  # USD per hour (cloud)
    unit_price: Figure | None = None  # USD per unit (edge)
    clock_hz: Figure | None = None
    overhead_s: dict[str, Figure] = field(default_factory=dict)
    bw_curve: Figure | None = None  # value: [[working_set_bytes, bytes_per_s], ...] ascending
    efficiency: dict[str, Figure] = field(default_factory=dict)  # value: {"compute": f, "memory": f}
    fresh_alloc: Figure | None = None  # value: {"threshold_bytes": n, "bytes_per_s": x} (page faults)
    kernels: dict[str, Figure] = field(default_factory=dict)  # per-family latency models (hardware.kernels)
    aliases: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        where = f"device {self.key!r}"
        if self.kind not in KINDS:
            raise DeviceError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.memory_level not in MEMORY_LEVELS:
            raise DeviceError(f"{where}: memory_level {self.memory_level!r} is not one of {', '.join(MEMORY_LEVELS)}")
        if not self.peak:
            raise DeviceError(f"{where}: no dense peak_flops given")
        for dt, fig in self.peak.items():
            if dt not in DTYPE_BYTES:
                raise DeviceError(f"{where}: peak_flops dtype {dt!r} unknown; expected one of {', '.join(DTYPE_BYTES)}")
            if not fig.value > 0:
                raise DeviceError(f"{where}: peak_flops[{dt}] must be > 0, got {fig.value}")
        if self.energy_ref_dtype not in self.peak:
            raise DeviceError(f"{where}: energy_ref_dtype {self.energy_ref_dtype!r} has no peak_flops entry")
        if not self.mem_bw.value > 0:
            raise DeviceError(f"{where}: mem_bw must be > 0, got {self.mem_bw.value}")
        if self.kind == "mcu" and (self.sram_bytes is None or self.flash_bytes is None):
            raise DeviceError(f"{where}: an MCU needs sram_bytes and flash_bytes")
        if self.kind != "mcu" and self.memory_bytes is None:
            raise DeviceError(f"{where}: memory_bytes missing")

    # ---- queries -------------------------------------------------------------------------------
    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(self.peak)

    def has_dtype(self, dtype: str) -> bool:
        return dtype in self.peak

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s (ops/s for integer dtypes) in `dtype`; a DeviceError if the device has none."""
        if dtype not in self.peak:
            raise DeviceError(
                f"{self.name} has no {dtype} peak in the catalog (it has {', '.join(self.dtypes)}); "
                f"choose one of those with --dtype (effml never falls back silently)")
        return float(self.peak[dtype].value)

    def sparse_peak_flops(self, dtype: str) -> float | None:
        """2:4-sparse peak, for reference only: predictions never use it."""
        fig = self.sparse.get(dtype)
        return float(fig.value) if fig else None

    @property
    def bandwidth(self) -> float:
        """Main-memory bandwidth in bytes/s (DRAM/HBM; SRAM bus for MCUs)."""
        return float(self.mem_bw.value)

    def ridge_point(self, dtype: str) -> float:
        """FLOPs per byte at which compute time equals memory time: peak / bandwidth."""
        return self.peak_flops(dtype) / self.bandwidth

    @property
    def price_per_hour(self) -> float | None:
        return float(self.price.value) if self.price else None

    @property
    def unit_price_usd(self) -> float | None:
        return float(self.unit_price.value) if self.unit_price else None

    @property
    def tdp(self) -> float | None:
        return float(self.tdp_w.value) if self.tdp_w else None

    @property
    def capacity_bytes(self) -> float:
        """Main memory (DRAM/HBM); for an MCU the SRAM."""
        fig = self.memory_bytes if self.kind != "mcu" else self.sram_bytes
        return float(fig.value)

    def figures(self) -> Iterator[tuple[str, Figure]]:
        """Every figure with a dotted path, for audits (the source test walks these)."""
        for name in ("mem_bw", "memory_bytes", "sram_bytes", "flash_bytes", "tdp_w", "price", "unit_price",
                     "clock_hz", "bw_curve", "fresh_alloc"):
            fig = getattr(self, name)
            if fig is not None:
                yield name, fig
        for group in ("peak", "sparse", "overhead_s", "efficiency", "kernels"):
            for k, fig in getattr(self, group).items():
                yield f"{group}.{k}", fig

    def to_dict(self) -> dict:
        """The catalog.json entry (plus its key): `device_from_dict(key, d)` rebuilds the device."""
        d = {"key": self.key, "name": self.name, "kind": self.kind, "aliases": list(self.aliases),
             "memory_level": self.memory_level, "energy_ref_dtype": self.energy_ref_dtype}
        schema = {v: k for k, v in {**_SCALARS, **_GROUPS}.items()}  # field -> JSON key (catalog.json)
        for path, fig in self.figures():
            group, _, sub = path.partition(".")
            group = schema.get(group, group)
            if sub:
                d.setdefault(group, {})[sub] = fig.to_dict()
            else:
                d[group] = fig.to_dict()
        if self.meta:
            d["meta"] = dict(self.meta)
        return d


# ---- loading ---------------------------------------------------------------------------------------
_SCALARS = {"mem_bw": "mem_bw", "memory_bytes": "memory_bytes", "sram_bytes": "sram_bytes",
            "flash_bytes": "flash_bytes", "tdp_w": "tdp_w", "price_per_hour": "price",
            "unit_price_usd": "unit_price", "clock_hz": "clock_hz", "bw_curve": "bw_curve",
            "fresh_alloc": "fresh_alloc"}
_GROUPS = {"peak_flops": "peak", "sparse_flops": "sparse", "overhead_s": "overhead_s", "efficiency": "efficiency",
           "kernels": "kernels"}


def _fig(key: str, path: str, raw) -> Figure:
    if not isinstance(raw, dict) or "value" not in raw:
        raise DeviceError(f"device {key!r}: {path} must be {{'value': ..., 'source': ...}}, got {raw!r}")
    if not str(raw.get("source", "")).strip():
        raise DeviceError(f"device {key!r}: {path} has no source: every figure must say where it is from")
    if isinstance(raw["value"], (int, float)) and not 0 <= raw["value"] < float("inf"):  # NaN fails it too
        raise DeviceError(f"device {key!r}: {path} is {raw['value']!r}, must be a finite number >= 0")
    return Figure(raw["value"], str(raw["source"]))


def device_from_dict(key: str, raw: dict) -> Device:
    """Build a Device from one catalog entry (the JSON schema of catalog.json)."""
    known = {"name", "kind", "aliases", "memory_level", "energy_ref_dtype", "meta", *_SCALARS, *_GROUPS}
    extra = set(raw) - known
    if extra:
        raise DeviceError(f"device {key!r}: unknown field(s) {', '.join(sorted(extra))}")
    kw: dict = {}
    for src, dst in _SCALARS.items():
        if raw.get(src) is not None:
            kw[dst] = _fig(key, src, raw[src])
    for src, dst in _GROUPS.items():
        kw[dst] = {k: _fig(key, f"{src}.{k}", v) for k, v in (raw.get(src) or {}).items()}
    if "mem_bw" not in kw:
        raise DeviceError(f"device {key!r}: mem_bw missing")
    return Device(key=key, name=raw.get("name", key), kind=raw.get("kind", ""),
                  memory_level=raw.get("memory_level", "dram"),
                  energy_ref_dtype=raw.get("energy_ref_dtype", "fp32"),
                  aliases=tuple(raw.get("aliases", ())), meta=dict(raw.get("meta", {})), **kw)


def load_devices(path: str | Path) -> dict[str, Device]:
    """Every device of a catalog-schema JSON file ({"devices": {key: entry}})."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeviceError(f"cannot read device file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise DeviceError(f"device file {path} has no 'devices' object")
    return {k: device_from_dict(k, v) for k, v in data["devices"].items()}


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Device]:
    with resources.as_file(resources.files("effml.hardware") / "catalog.json") as p:
        return load_devices(p)


def local_device_path() -> Path:
    """Where `effml calibrate` saves the `local` device: $EFFML_LOCAL_DEVICE or the user cache dir."""
    env = os.environ.get(LOCAL_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("effml")) / "local_device.json"


def load_local(path: str | Path | None = None) -> Device:
    p = Path(path) if path is not None else local_device_path()
    if not p.exists():
        raise DeviceError(f"no calibration of this machine at {p}: run `effml calibrate` first "
                          f"(it measures matmul, bandwidth and overhead in ~30 s and saves the 'local' device)")
    devices = load_devices(p)
    if LOCAL not in devices:
        raise DeviceError(f"{p} has no 'local' device; re-run `effml calibrate`")
    return devices[LOCAL]


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for key, dev in _catalog().items():
        idx[_norm(key)] = key
        idx[_norm(dev.name)] = key
        for a in dev.aliases:
            idx[_norm(a)] = key
    return idx


def get_device(name: "str | Device", *, local_path: str | Path | None = None) -> Device:
    """A catalog device by name or alias ("h100", "H100-SXM"), `local`, or a device JSON file path."""
    if isinstance(name, Device):
        return name
    if not isinstance(name, str) or not name.strip():
        raise DeviceError(f"device name must be a non-empty string, got {name!r}")
    if _norm(name) == LOCAL:
        return load_local(local_path)
    if name.endswith(".json"):
        devs = load_devices(name)
        if len(devs) != 1:
            raise DeviceError(f"{name} holds {len(devs)} devices; name one of {', '.join(devs)}")
        return next(iter(devs.values()))
    idx = _index()
    key = idx.get(_norm(name))
    if key is None:
        close = difflib.get_close_matches(_norm(name), list(idx) + [LOCAL], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(dict.fromkeys(idx.get(c, c) for c in close))}?" if close else ""
        raise DeviceError(f"unknown device {name!r}{hint} (`effml hw list` shows all: "
                          f"{', '.join(sorted(_catalog()))}, local)")
    return _catalog()[key]


def list_devices(include_local: bool = False) -> list[Device]:
    """The catalog devices (and `local` if calibrated and asked for)."""
    devs = list(_catalog().values())
    if include_local and local_device_path().exists():
        devs.append(load_local())
    return devs
