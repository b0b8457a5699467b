"""Weight formats for the decoder and the engine's one-off preparation before decoding.

    notes = to_format(model, FormatConfig("int4", group_size=32))   # in place: fp32 | bf16 | int8 | int4
    plan = prepare(model)       # fuse QKV and gate/up, pick the activation dtype, tabulate RoPE -> EnginePlan
    plan.kernels, plan.act_dtype, plan.notes

A decode step of a small model on a CPU should only be reading weights. `prepare` removes what is not: three
projection calls become one (wqkv) and two become one (w13); the RoPE cos/sin are looked up, not recomputed; the
activations run in bf16 when the CPU has bf16 arithmetic (avx512_bf16 or AMX) and the weights are bf16 or
int8/int4 codes (torch's weight-only kernels are 2.5-6x faster with bf16 activations than with fp32 ones: see
effml.compress.weight_only). A format the CPU has no fast kernel for still runs, and the plan's notes say so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import ConfigError
from effml.llm.model import Transformer, compute_dtype, fuse_projections
from effml.native import MAX_ROWS

FORMATS = ("fp32", "bf16", "int8", "int4")
KERNELS = {"packed": "a8", "exact": "packed", "torch": "torch"}  # FormatConfig.kernel -> WeightOnlyLinear kernel
ROPE_TABLE_MAX = 32768  # positions tabulated at most (32768 x head_dim x 2 fp32: 16 MiB at head_dim 64)


def native_bf16() -> bool:
    """Does this CPU have bf16 arithmetic (AVX-512 BF16 or AMX)? (Detected, never assumed.)"""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class FormatConfig:
    format: str = "fp32"
    group_size: int = 32  # int4 only
    # int8/int4: the LM head's format (the largest matrix, 49152 x 576 in SmolLM2). "auto": int8 for both; an int4
    # head costs SmolLM2 the most quality (teacher-forced greedy agreement with fp32: 86% with it vs 97% with int8)
    head: str = "auto"
    # int8/int4: "packed" = the fastest kernels here: effml's gemv_a8 where the build has AVX-512 VNNI or AVX2
    # (codes x activations rounded to int8 per 32, as llama.cpp), else "exact"'s; "exact" = weight-only
    # arithmetic with fp32 activations (effml's own int8 GEMV, torch's int4 kernel); "torch" = torch's kernels only
    # (the reference the benchmark compares against)
    kernel: str = "packed"

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ConfigError(f"FormatConfig.kernel {self.kernel!r} must be one of {', '.join(KERNELS)}")
        if self.head not in ("auto", "fp32", "int8", "int4"):
            raise ConfigError(f"FormatConfig.head {self.head!r} must be auto, fp32, int8 or int4")
        if self.format not in FORMATS:
            raise ConfigError(f"weight format {self.format!r} unknown; expected one of {', '.join(FORMATS)}")
        if self.group_size not in (32, 64, 128, 256):
            raise ConfigError(f"FormatConfig.group_size must be 32, 64, 128 or 256, got {self.group_size}")


def weights_format(model: nn.Module) -> str:
    """What the model's projections are stored as: int4, int8 (weight-only), int8-dynamic, bf16 or fp32."""
    from effml.compress.weight_only import WeightOnlyLinear

    bits = {m.bits for m in model.modules() if isinstance(m, WeightOnlyLinear)}
    if bits:
        return f"int{min(bits)}"
    if any(callable(getattr(m, "weight", None)) for m in model.modules()):
        return "int8-dynamic"
    return "bf16" if model.tok_embeddings.weight.dtype == torch.bfloat16 else "fp32"


def check_unprepared(model: nn.Module, what: str) -> None:
    """A model `prepare` has run on holds its projections as the engine's packed copies (PackedLinear), which weight
    quantization does not see: converting it would leave it fp32 without a word. Refused by name instead."""
    packed = [n for n, m in model.named_modules() if isinstance(m, PackedLinear)]
    if packed or getattr(model, "fast_decode", False):
        raise ConfigError(f"{what} needs a model engine.prepare has not run on ({len(packed)} projections are "
                          f"already packed, e.g. {packed[0] if packed else 'the fused decode step'}): convert the "
                          f"weights first, then prepare (to_format(model, ...); prepare(model))")


def to_format(model: Transformer, config: FormatConfig) -> list[str]:
    """Convert the model's weights in place; returns notes (which layers, which kernels, any slow path)."""
    from effml.compress.weight_only import weight_only

    check_unprepared(model, "to_format")
    if weights_format(model) != "fp32":
        raise ConfigError(f"to_format needs an fp32 model, this one is {weights_format(model)}")
    if config.format == "fp32":
        return []
    if config.format == "bf16":
        from effml import native

        model.to(torch.bfloat16)
        if native_bf16() or native.load() is not None:  # bf16 arithmetic, or effml's GEMV widening bf16 exactly
            return []
        return [f"bf16 on a CPU without bf16 arithmetic (capability {torch.backends.cpu.get_cpu_capability()}): "
                "emulated, expect it slower than fp32"]
    bits = 8 if config.format == "int8" else 4
    kernel = KERNELS[config.kernel]  # WeightOnlyLinear's name for it
    _, _, notes = weight_only(model, bits, config.group_size, kernel, ("output",))
    head = {"auto": 8, "int8": 8, "int4": 4, "fp32": 0}[config.head]
    if head:  # only the head is still an nn.Linear now
        _, _, head_notes = weight_only(model, head, config.group_size, kernel)
        notes += [f"LM head: {n}" for n in head_notes]
    return notes


class PackedLinear(nn.Module):
    """An nn.Linear run by the fastest kernel here for the rows it gets.

    fp32 weights, with effml's kernels built: effml's `gemv_tiles` for every row count, on a copy of the weight
    with 32 output rows interleaved (16 on AVX2) in memory advised for 2 MiB pages: decode rows at close to the
    memory bandwidth, up to 12 activation rows per pass over a group (6 on AVX2; a speculative verification, a
    batch: bench_kernels' fp32 rows give the cost against one row), and more rows in blocks over each chunk of groups
    while it sits in L2 (a prefill at the FMA units' rate: bench_kernels' fp32 prefill rows, against oneDNN's packed
    matmul and MKL's packed sgemm). See effml/native/tiles.cpp. The
    row-major weight is then never read again and `pack_linears` drops it (`release_weight`), unless another module
    shares it (a head tied to the embedding): a prepared float model holds its projections once, not twice.
    bf16 weights: `gemv_tiles` up to effml.native.MAX_ROWS rows, more in the CPU library's blocked layout packed
    once (`kind`): "mkldnn" = oneDNN's packed matmul (`torch.ops.mkldnn._linear_pointwise`) where the CPU has bf16
    arithmetic, else gemv_tiles for every row count too. Without effml's kernels, fp32 prefills go to oneDNN on
    AVX-512 and to MKL's packed sgemm (`torch.ops.mkl._mkl_linear`, what torch.compile's CPU freezing pass calls)
    for tall matrices elsewhere (out > in: fused QKV, gate/up, the head); F.linear otherwise."""

    def __init__(self, lin: nn.Linear, kind: str, gemv=None):
        super().__init__()
        self.weight, self.bias, self.kind = lin.weight, lin.bias, kind  # the original (possibly tied) tensors
        self.dtype = lin.weight.dtype
        self.in_features, self.out_features = lin.in_features, lin.out_features
        w = lin.weight.detach()
        # oneDNN's batch-size hint: 1 picks a layout for single rows, slower for fp32 prefills (any hint >= 8
        # measured alike at 9-400 rows); bf16 measured the same with either
        hint = PREFILL_ROWS_HINT if w.dtype == torch.float32 else 1
        packed = (torch.ops.mkl._mkl_reorder_linear_weight(w, 1) if kind == "mkl"
                  else torch.ops.mkldnn._reorder_linear_weight(w, hint) if kind == "mkldnn" else None)
        self.register_buffer("packed", packed, persistent=False)
        self._gemv = gemv  # effml.native's module, or None
        self._tiles = None if gemv is None else gemv.pack_tiles(w)  # (ceil(out/W), in, W), the weight's dtype
        self._bias32 = None if lin.bias is None else lin.bias.detach().float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        if self._gemv is not None and (x2.shape[0] <= MAX_ROWS or self.packed is None):
            y = self._gemv.gemv_tiles(x2.float().contiguous(), self._tiles, self.out_features, self._bias32)
        elif self.kind == "mkl":
            y = torch.ops.mkl._mkl_linear(x2, self.packed, self.weight, self.bias, 1)
        elif self.kind == "mkldnn":
            y = torch.ops.mkldnn._linear_pointwise(x2.to(self.dtype), self.packed, self.bias, "none", [], "")
        else:
            y = F.linear(x2.to(self.dtype), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., out)

    def weight_unread(self) -> bool:
        """Whether forward never reads the row-major weight and the tiles stand for it (what a decode row reads, as
        the roofline counts): gemv_tiles takes every row count, or the few rows with oneDNN's packed copy the rest.
        Without effml's kernels the library's opaque packing alone would be left, so the weight stays."""
        return self._tiles is not None and (self.packed is None or self.kind == "mkldnn")

    def release_weight(self) -> None:
        """Drop the row-major weight (forward runs on the packed copies alone; see weight_unread)."""
        if not self.weight_unread():
            raise ConfigError(f"PackedLinear ({self.kind}) still reads its row-major weight: it cannot be released")
        self.weight = None

    def kernel_used(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        big = {"mkl": "MKL packed sgemm (fp32)", "mkldnn": f"oneDNN packed matmul ({dt})"}.get(
            self.kind, f"F.linear ({dt})")
        if self._gemv is None:
            return big
        tiles = f"effml gemv_tiles ({self._gemv.tiles_isa()}, fp32 activations)"
        return tiles if self.packed is None else f"{tiles} for <= {MAX_ROWS} rows; {big} above"


PREFILL_ROWS_HINT = 32  # oneDNN's batch-size hint when packing an fp32 weight for prefills


def onednn_fp32() -> bool:
    """Without effml's kernels, whether fp32 prefills go to oneDNN's packed matmul rather than MKL's: on AVX-512
    CPUs, where it measured 1.2-2x faster (bench_kernels' fp32 prefill rows). Elsewhere MKL stays: oneDNN capped at
    AVX2 on the same machine was faster at 9-16 rows but slower on some shapes at 80+."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def pack_linears(model: nn.Module) -> tuple[list[str], list[str]]:
    """Swap plain fp32 and bf16 nn.Linear layers for PackedLinear where a faster kernel is there: names, notes."""
    from effml import native

    gemv = native.load() if next(model.parameters()).device.type == "cpu" else None
    holders = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))  # > 1: shared (tied head)
    names, failed = [], {}  # (kind, error) -> layer names
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear or m.weight.dtype not in (torch.float32, torch.bfloat16):
            continue
        dt = m.weight.dtype
        if dt == torch.float32 and gemv is not None:
            kind = "plain"  # gemv_tiles for every row count: no library copy
        elif dt == torch.float32 and torch.backends.mkldnn.is_available() and onednn_fp32():
            kind = "mkldnn"
        elif dt == torch.float32 and m.out_features > m.in_features and torch.backends.mkl.is_available():
            kind = "mkl"
        elif dt == torch.bfloat16 and torch.backends.mkldnn.is_available() and native_bf16():
            kind = "mkldnn"
        elif gemv is not None:
            kind = "plain"
        else:
            continue
        try:
            packed = PackedLinear(m, kind, gemv)
        except RuntimeError as e:
            # the library refuses the packing (a torch build without the op; oneDNN held below the ISA its bf16
            # path needs, e.g. ONEDNN_MAX_CPU_ISA=AVX2 on a CPU whose flags report bf16): with effml's kernels,
            # gemv_tiles takes every row count, as for fp32 (a bare nn.Linear would get the fp32 rows the fused
            # step feeds it); without them F.linear stays. Either way the plan says so.
            failed.setdefault((kind, str(e).strip().splitlines()[0][:200]), []).append(name)
            if gemv is None:
                continue
            packed = PackedLinear(m, "plain", gemv)
        if packed.weight_unread() and holders[id(m.weight)] == 1:
            packed.release_weight()  # the packed copy replaces it: the model's projections in memory once
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, packed)
        names.append(name)
    instead = "effml's gemv_tiles takes every row count" if gemv is not None else "F.linear kept"
    notes = [f"packing for {kind} failed on {len(who)} layer(s) ({who[0]}{', ...' if len(who) > 1 else ''}: {err}); "
             f"{instead}" for (kind, err), who in failed.items()]
    return names, notes


def release_freed_memory() -> bool:
    """Hand the heap's freed pages back to the OS (glibc's malloc_trim; False where there is none). Packing copies
    every projection (tiles, int4 codes) and then copies those into one region (fastpath.place); glibc keeps the
    freed originals in the process's heap, since freeing large blocks raises its mmap threshold: a prepared
    Qwen3-0.6B-shaped fp32 model (2.4 GB of weights) held 6.5 GB resident for 3.0 GB of live tensors (the tiles
    and the tied embedding), 3.5 GB after the trim."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        return False


@dataclass
class EnginePlan:
    format: str
    cpu_capability: str
    native_bf16: bool
    act_dtype: str
    fused: int  # projections fused
    kernels: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _kernels(model: nn.Module) -> tuple[list[str], list[str]]:
    from effml.compress.weight_only import WeightOnlyLinear

    kernels, notes = set(), []
    for name, m in model.named_modules():
        if isinstance(m, (WeightOnlyLinear, PackedLinear)):
            kernels.add(m.kernel_used())
            if isinstance(m, WeightOnlyLinear) and m.note and m.note != "int4-shape":
                notes.append(m.note)
        elif type(m) is nn.Linear:
            kernels.add(f"F.linear ({str(m.weight.dtype).removeprefix('torch.')})")
        elif callable(getattr(m, "weight", None)):
            kernels.add(f"{type(m).__module__}.{type(m).__name__} (dynamic int8)")
    return sorted(kernels), notes


def prepare(model: Transformer) -> EnginePlan:
    """Ready `model` for decoding, in place (idempotent): fused projections, activation dtype, RoPE table.

    One way: the float projections then live only in their packed copies (PackedLinear.release_weight), so convert
    the format first (`to_format`, which refuses a prepared model) and keep an unprepared copy to save or compress
    further (a prepared model's state_dict holds no projection weights; deepcopy it before, not after)."""
    from effml.compress.weight_only import WeightOnlyLinear

    fused = fuse_projections(model)
    model.rope.build_table(min(model.args.max_seq_len, ROPE_TABLE_MAX))
    fmt, bf16 = weights_format(model), native_bf16()
    wol = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    for m in wol:
        m._prepare()  # pack int4 codes and convert scales now, not inside the first request's prefill
    notes = []
    plain = [n for n, m in model.named_modules() if (type(m) is nn.Linear and m.weight.dtype != torch.bfloat16) or
             (type(m) is PackedLinear and m.dtype != torch.bfloat16)]
    from effml.llm import fastpath

    torch_kernels = [m for m in wol if not m.native() and m.a8() is None]  # effml's own GEMVs take fp32 rows
    fused_ops = fastpath.available()  # fp32 fused decode ops: int4 layers then take bf16 rows inside each call
    if torch_kernels and bf16 and not plain and not fused_ops and \
            all(m.act_dtype == torch.bfloat16 for m in torch_kernels):
        model.act_dtype = torch.bfloat16  # the whole step in bf16: no conversion at each projection
    elif torch_kernels and not fused_ops:
        why = f"{', '.join(plain[:3])} stay fp32" if plain else "no bf16 arithmetic on this CPU"
        notes.append(f"activations stay fp32 and are converted at each quantized projection ({why})")
    elif torch_kernels:
        notes.append("activations stay fp32 for effml's fused decode ops; each int4 projection converts its rows "
                     "to its kernel's dtype")
    if fmt == "bf16" and fused_ops:
        model.act_dtype = torch.float32  # bf16 weights widened inside effml's GEMV; the fused step runs in fp32
    elif fmt == "bf16" and not bf16:
        notes.append("bf16 weights on a CPU without bf16 arithmetic: emulated, slower than fp32")
    _, pnotes = pack_linears(model)
    pnotes += fastpath.enable(model)
    kernels, knotes = _kernels(model)
    if model.fast_decode:
        kernels.append("effml fused decode ops (rms_norm, RoPE + cache write + attention, silu*up): up to "
                       f"{fastpath.MAX_TOKENS} tokens of one sequence in a contiguous cache")
    notes += pnotes
    release_freed_memory()
    return EnginePlan(fmt, torch.backends.cpu.get_cpu_capability(), bf16,
                      str(compute_dtype(model)).removeprefix("torch."), len(fused), kernels, notes + knotes)
